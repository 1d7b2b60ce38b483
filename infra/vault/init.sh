#!/bin/sh
# Citadel Vault bootstrap: idempotent, safe to run on every start (e.g. the docker-compose
# init container, or by hand against a fresh Vault). Uses only the `vault` CLI and POSIX sh.
#
#   VAULT_ADDR, VAULT_TOKEN       required (an admin/root token; never printed)
#   CITADEL_POLICY_DIR            default: the policies/ folder next to this script
#   CITADEL_K8S_HOST              Kubernetes API URL for the kubernetes auth config
#                                 (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
#                                 when running in a pod; otherwise the config step is skipped)
#   CITADEL_K8S_NAMESPACE         worker namespace (default citadel)
#   CITADEL_APPROLE_OUT           if set: space-separated ROLE:DIR[:GID] entries; writes ROLE's
#                                 <role>.role-id and <role>.secret-id into DIR only (mode 0400, or
#                                 0440 with group GID), for the one service role that mounts DIR
#   CITADEL_APPROLE_OUT_DIR       older form: both AppRoles' files into one DIR (mode 0400)
#
# Usage: init.sh                      configure everything, print only progress lines
#        init.sh print-approle ROLE   also print ROLE's role_id and a NEW secret_id on stdout
#                                     (the only way this script ever writes a secret to stdout)
set -eu

: "${VAULT_ADDR:?VAULT_ADDR must be set}"
: "${VAULT_TOKEN:?VAULT_TOKEN must be set}"
export VAULT_ADDR VAULT_TOKEN

SCRIPT_DIR=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
POLICY_DIR=${CITADEL_POLICY_DIR:-$SCRIPT_DIR/policies}
MODELS_KEY=citadel-models
SIGNING_KEY=citadel-signing
K8S_NAMESPACE=${CITADEL_K8S_NAMESPACE:-citadel}

log() { printf '[vault-init] %s\n' "$*" >&2; }

# Wait (up to 60 s) for an initialised, unsealed Vault. `vault status`: 0 ok, 2 sealed, 1 error.
i=0
until vault status >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -ge 60 ]; then
    log "Vault at $VAULT_ADDR is not ready (sealed or unreachable)"
    exit 1
  fi
  sleep 1
done

enabled_secrets() { vault secrets list 2>/dev/null | awk 'NR>2 {print $1}'; }
enabled_auths() { vault auth list 2>/dev/null | awk 'NR>2 {print $1}'; }

# Transit engine and the two keys.
if enabled_secrets | grep -qx 'transit/'; then
  log "transit already enabled"
else
  vault secrets enable -path=transit transit >/dev/null
  log "enabled transit"
fi

ensure_key() { # name type
  if current=$(vault read -field=type "transit/keys/$1" 2>/dev/null); then
    if [ "$current" != "$2" ]; then
      log "transit key $1 exists with type $current, expected $2: refusing to continue"
      exit 1
    fi
    log "transit key $1 ($2) already exists"
  else
    vault write -f "transit/keys/$1" type="$2" >/dev/null
    log "created transit key $1 ($2)"
  fi
}
ensure_key "$MODELS_KEY" aes256-gcm96
ensure_key "$SIGNING_KEY" ed25519

# Policies (rewritten each run so the files stay the source of truth).
for role in citadel-worker citadel-publisher; do
  vault policy write "$role" "$POLICY_DIR/$role.hcl" >/dev/null
  log "wrote policy $role"
done

# AppRole: one role per policy. Writing a role again updates it in place.
if enabled_auths | grep -qx 'approle/'; then
  log "approle already enabled"
else
  vault auth enable approle >/dev/null
  log "enabled approle"
fi
vault write auth/approle/role/citadel-worker \
  token_policies=citadel-worker token_ttl=1h token_max_ttl=24h \
  secret_id_ttl=0 secret_id_num_uses=0 >/dev/null
vault write auth/approle/role/citadel-publisher \
  token_policies=citadel-publisher token_ttl=20m token_max_ttl=2h \
  secret_id_ttl=24h secret_id_num_uses=0 >/dev/null
log "wrote approle roles citadel-worker, citadel-publisher"

# Kubernetes auth for the worker service account.
if enabled_auths | grep -qx 'kubernetes/'; then
  log "kubernetes auth already enabled"
else
  vault auth enable kubernetes >/dev/null
  log "enabled kubernetes auth"
fi
K8S_HOST=${CITADEL_K8S_HOST:-}
if [ -z "$K8S_HOST" ] && [ -n "${KUBERNETES_SERVICE_HOST:-}" ]; then
  K8S_HOST="https://$KUBERNETES_SERVICE_HOST:${KUBERNETES_SERVICE_PORT:-443}"
fi
if [ -n "$K8S_HOST" ]; then
  vault write auth/kubernetes/config kubernetes_host="$K8S_HOST" >/dev/null
  log "configured kubernetes auth for $K8S_HOST"
else
  log "no Kubernetes API known (set CITADEL_K8S_HOST): kubernetes auth config left unchanged"
fi
# audience=vault: workers present a projected token minted for Vault, not the default one.
vault write auth/kubernetes/role/citadel-worker \
  bound_service_account_names=citadel-worker \
  bound_service_account_namespaces="$K8S_NAMESPACE" \
  audience=vault \
  token_policies=citadel-worker token_ttl=1h token_max_ttl=24h >/dev/null
log "wrote kubernetes role citadel-worker (service account citadel-worker in namespace $K8S_NAMESPACE)"
vault write auth/kubernetes/role/citadel-publisher \
  bound_service_account_names=citadel-publisher \
  bound_service_account_namespaces="$K8S_NAMESPACE" \
  audience=vault \
  token_policies=citadel-publisher token_ttl=15m token_max_ttl=1h >/dev/null
log "wrote kubernetes role citadel-publisher (service account citadel-publisher in namespace $K8S_NAMESPACE)"

# Optional credential hand-off: files, never stdout. Each file is written to a private
# temp file, given its mode (and group), then renamed into place: no reader ever sees a
# partial or wrongly-permissioned file. A secret-id is created once and kept.
publish_file() { # TMP DEST [GID]
  if [ -n "${3:-}" ]; then
    chgrp "$3" "$1"
    chmod 0440 "$1"
  else
    chmod 0400 "$1"
  fi
  mv -f "$1" "$2"
}
write_approle() { # ROLE DIR [GID]
  ar_role=$1
  ar_dir=$2
  ar_gid=${3:-}
  mkdir -p "$ar_dir"
  if [ -n "$ar_gid" ]; then
    chgrp "$ar_gid" "$ar_dir"
    chmod 0750 "$ar_dir"
  fi
  vault read -field=role_id "auth/approle/role/$ar_role/role-id" >"$ar_dir/.$ar_role.role-id.tmp"
  publish_file "$ar_dir/.$ar_role.role-id.tmp" "$ar_dir/$ar_role.role-id" "$ar_gid"
  if [ -s "$ar_dir/$ar_role.secret-id" ]; then
    if [ -n "$ar_gid" ]; then chgrp "$ar_gid" "$ar_dir/$ar_role.secret-id"; fi
  else
    vault write -f -field=secret_id "auth/approle/role/$ar_role/secret-id" >"$ar_dir/.$ar_role.secret-id.tmp"
    publish_file "$ar_dir/.$ar_role.secret-id.tmp" "$ar_dir/$ar_role.secret-id" "$ar_gid"
  fi
  log "wrote AppRole $ar_role credentials to $ar_dir${ar_gid:+ (group $ar_gid, mode 0440)}"
}
if [ -n "${CITADEL_APPROLE_OUT:-}${CITADEL_APPROLE_OUT_DIR:-}" ]; then
  old_umask=$(umask)
  umask 077
  for entry in ${CITADEL_APPROLE_OUT:-}; do
    case "$entry" in
      citadel-worker:* | citadel-publisher:*) ;;
      *)
        log "CITADEL_APPROLE_OUT: unknown role in '$entry'"
        exit 1
        ;;
    esac
    IFS=: read -r e_role e_dir e_gid <<EOF_ENTRY
$entry
EOF_ENTRY
    write_approle "$e_role" "$e_dir" "$e_gid"
  done
  if [ -n "${CITADEL_APPROLE_OUT_DIR:-}" ]; then
    for role in citadel-worker citadel-publisher; do
      write_approle "$role" "$CITADEL_APPROLE_OUT_DIR"
    done
  fi
  umask "$old_umask"
fi

if [ "${1:-}" = "print-approle" ]; then
  role=${2:?usage: init.sh print-approle ROLE}
  printf 'role_id=%s\n' "$(vault read -field=role_id "auth/approle/role/$role/role-id")"
  printf 'secret_id=%s\n' "$(vault write -f -field=secret_id "auth/approle/role/$role/secret-id")"
fi

log "done"
