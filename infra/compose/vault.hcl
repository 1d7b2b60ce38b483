# Vault server for docker compose: persistent file storage so Transit keys (and so
# every sealed model) survive restarts. TLS is off on the private compose network
# only; docs/deployment.md describes the production listener.
storage "file" {
  path = "/vault/file"
}

listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true
}

api_addr      = "http://vault:8200"
ui            = false
# The container runs without IPC_LOCK (all capabilities dropped); swap should be
# off on the host instead.
disable_mlock = true
log_level     = "info"
