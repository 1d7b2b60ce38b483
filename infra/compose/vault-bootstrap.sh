#!/bin/sh
# One-shot Vault bootstrap for docker compose (runs in the pinned Vault image as the
# bootstrap uid, see roles.env):
#  1. initialise Vault on first start (1 key share: a laptop, not production). The unseal
#     key goes to the citadel-vault-keys volume (mode 0400), which no other service
#     mounts; the initial root token stays in this shell's memory, never on disk;
#  2. unseal it (every start: a restarted Vault comes back sealed);
#  3. on later starts, mint a fresh root token from the unseal key (generate-root with a
#     one-time password);
#  4. run infra/vault/init.sh with it: Transit, keys, policies, AppRoles; each AppRole's
#     role-id/secret-id go into that role's own volume (group = the role's gid, 0440);
#  5. revoke the root token (`vault token revoke -self`; also when a step fails) and
#     check it is dead.
# An operator who needs a root token later makes one the same way by hand:
# `vault operator generate-root` with the unseal key (docs/deployment.md).
# Production initialises Vault with Shamir shares / auto-unseal instead.
set -eu
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
# shellcheck source=roles.env
. "$here/roles.env"
root="${CITADEL_SECRETS_ROOT:-/secrets}"
keys="$root/vault-keys"
init_sh="${CITADEL_VAULT_INIT:-/opt/citadel/vault/init.sh}"
VAULT_ADDR="${VAULT_ADDR:-http://vault:8200}"
export VAULT_ADDR
unset VAULT_TOKEN
umask 077

log() { printf '[vault-bootstrap] %s\n' "$*" >&2; }

root_token=""
revoke_root() {
  [ -n "$root_token" ] || return 0
  token="$root_token"
  root_token=""
  if ! VAULT_TOKEN="$token" vault token revoke -self >/dev/null; then
    log "could not revoke this run's root token: revoke it by hand (vault token revoke -self)"
    return 1
  fi
  if VAULT_TOKEN="$token" vault token lookup >/dev/null 2>&1; then
    log "the root token still works after revoke-self"
    return 1
  fi
  log "root token revoked"
}
trap 'rc=$?; revoke_root || rc=1; exit "$rc"' EXIT
trap 'exit 1' INT TERM HUP

i=0
until vault status >/dev/null 2>&1 || [ "$?" -eq 2 ]; do
  i=$((i + 1))
  [ "$i" -gt 60 ] && { log "vault not reachable at $VAULT_ADDR"; exit 1; }
  sleep 1
done

if vault status 2>/dev/null | grep -q '^Initialized *false'; then
  out=$(vault operator init -key-shares=1 -key-threshold=1)
  unseal_key=$(printf '%s\n' "$out" | awk -F': ' '/^Unseal Key 1:/ {print $2}')
  root_token=$(printf '%s\n' "$out" | awk -F': ' '/^Initial Root Token:/ {print $2}')
  out=""
  if [ -z "$unseal_key" ] || [ -z "$root_token" ]; then
    log "vault operator init printed no unseal key or no root token"
    exit 1
  fi
  printf '%s' "$unseal_key" >"$keys/vault-unseal-key.tmp"
  chmod 0400 "$keys/vault-unseal-key.tmp"
  mv -f "$keys/vault-unseal-key.tmp" "$keys/vault-unseal-key"
  unseal_key=""
  log "vault initialised; unseal key kept in the citadel-vault-keys volume (0400), root token only in memory"
fi

# An older bootstrap kept the root token on disk: use it this once, then revoke it.
if [ -z "$root_token" ] && [ -s "$keys/vault-root-token" ]; then
  root_token=$(cat "$keys/vault-root-token")
  rm -f "$keys/vault-root-token"
  log "found a stored root token from an older bootstrap: removed it; it is revoked at the end of this run"
fi

if vault status 2>/dev/null | grep -q '^Sealed *true'; then
  [ -s "$keys/vault-unseal-key" ] || { log "Vault is sealed and $keys/vault-unseal-key is missing"; exit 1; }
  vault operator unseal "$(cat "$keys/vault-unseal-key")" >/dev/null
  log "vault unsealed"
fi

if [ -z "$root_token" ]; then
  if vault operator generate-root -status | grep -q '^Started *true'; then
    vault operator generate-root -cancel >/dev/null
  fi
  otp=$(vault operator generate-root -generate-otp)
  nonce=$(vault operator generate-root -init -otp="$otp" | awk '$1 == "Nonce" {print $2}')
  # "-": the unseal key is read from stdin, not passed on a command line.
  encoded=$(vault operator generate-root -nonce="$nonce" - <"$keys/vault-unseal-key" |
    awk '/^Encoded (Root )?Token/ {print $NF}')
  root_token=$(vault operator generate-root -decode="$encoded" -otp="$otp")
  otp=""
  encoded=""
  [ -n "$root_token" ] || { log "generate-root returned no token"; exit 1; }
  log "minted a root token for this run from the unseal key"
fi

VAULT_TOKEN="$root_token" \
  CITADEL_APPROLE_OUT="citadel-worker:$root/worker/approle:$CITADEL_ID_WORKER citadel-publisher:$root/publisher/approle:$CITADEL_ID_PUBLISHER" \
  sh "$init_sh"
revoke_root
