#!/bin/sh
# One-shot Vault bootstrap for docker compose (runs in the pinned Vault image):
#  1. initialise Vault on first start (1 key share: a laptop, not production) and keep
#     the unseal key and root token in the citadel-secrets volume (mode 0640);
#  2. unseal it (every start: a restarted Vault comes back sealed);
#  3. run infra/vault/init.sh with the root token: Transit, keys, policies, AppRole.
# Production initialises Vault with Shamir shares / auto-unseal instead.
set -eu
dir="${CITADEL_SECRETS_DIR:-/run/citadel}"
export VAULT_ADDR="${VAULT_ADDR:-http://vault:8200}"
umask 027

i=0
until vault status >/dev/null 2>&1 || [ "$?" -eq 2 ]; do
  i=$((i + 1))
  [ "$i" -gt 60 ] && { echo "vault not reachable at $VAULT_ADDR" >&2; exit 1; }
  sleep 1
done

if vault status 2>/dev/null | grep -q '^Initialized *false'; then
  vault operator init -key-shares=1 -key-threshold=1 > "$dir/vault-init.txt.tmp"
  awk -F': ' '/^Unseal Key 1:/ {print $2}' "$dir/vault-init.txt.tmp" > "$dir/vault-unseal-key"
  awk -F': ' '/^Initial Root Token:/ {print $2}' "$dir/vault-init.txt.tmp" > "$dir/vault-root-token"
  rm -f "$dir/vault-init.txt.tmp"
  echo "vault initialised; unseal key and root token kept in the citadel-secrets volume"
fi

if vault status 2>/dev/null | grep -q '^Sealed *true'; then
  vault operator unseal "$(cat "$dir/vault-unseal-key")" >/dev/null
  echo "vault unsealed"
fi

VAULT_TOKEN="$(cat "$dir/vault-root-token")"
export VAULT_TOKEN
export CITADEL_SECRETS_DIR="$dir"
exec sh /opt/citadel/vault/init.sh
