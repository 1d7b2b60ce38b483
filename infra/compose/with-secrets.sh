#!/bin/sh
# Entry wrapper for Citadel containers in docker compose: turns the generated secret
# files into the environment the app expects, then execs the real command.
#   CITADEL_VAULT_ROLE=citadel-worker|citadel-publisher   AppRole written by
#   infra/vault/init.sh (CITADEL_APPROLE_OUT_DIR=$CITADEL_SECRETS_DIR/approle)
set -eu
dir="${CITADEL_SECRETS_DIR:-/run/citadel}"
role="${CITADEL_VAULT_ROLE:-}"

if [ -r "$dir/redis-password" ]; then
  REDIS_URL="redis://:$(cat "$dir/redis-password")@${REDIS_HOST:-redis}:${REDIS_PORT:-6379}"
  export REDIS_URL
fi
if [ -n "$role" ] && [ -r "$dir/approle/$role.role-id" ]; then
  VAULT_ROLE_ID="$(cat "$dir/approle/$role.role-id")"
  export VAULT_ROLE_ID
  export VAULT_SECRET_ID_FILE="$dir/approle/$role.secret-id"
fi
if [ -r "$dir/trusted-signers.json" ]; then
  export TRUSTED_SIGNERS="$dir/trusted-signers.json"
fi
exec "$@"
