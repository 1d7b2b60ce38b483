#!/bin/sh
# Entry wrapper for Citadel containers in docker compose: turns the role's own secret
# files (its citadel-secrets-<role> volume at $CITADEL_SECRETS_DIR) into the environment
# the app expects, then execs the real command.
#   REDIS_USER=api|worker|publisher          the role's Redis ACL user (gen-secrets.mjs)
#   CITADEL_VAULT_ROLE=citadel-worker|citadel-publisher   the AppRole init.sh wrote into
#                                            this role's volume ($dir/approle/)
set -eu
dir="${CITADEL_SECRETS_DIR:-/run/citadel}"
role="${CITADEL_VAULT_ROLE:-}"

if [ -r "$dir/redis-password" ]; then
  : "${REDIS_USER:?REDIS_USER must name this role's Redis user}"
  REDIS_URL="redis://$REDIS_USER:$(cat "$dir/redis-password")@${REDIS_HOST:-redis}:${REDIS_PORT:-6379}"
  export REDIS_URL
fi
if [ -n "$role" ] && [ -r "$dir/approle/$role.role-id" ]; then
  VAULT_ROLE_ID="$(cat "$dir/approle/$role.role-id")"
  export VAULT_ROLE_ID
  export VAULT_SECRET_ID_FILE="$dir/approle/$role.secret-id"
fi
# The pinned signer public keys the publisher wrote (read-only for everyone else).
signers="${CITADEL_SIGNERS_FILE:-/etc/citadel/signers/trusted-signers.json}"
if [ -z "${TRUSTED_SIGNERS:-}" ] && [ -r "$signers" ]; then
  export TRUSTED_SIGNERS="$signers"
fi
exec "$@"
