# Citadel publisher (CI / `citadel seal` + `citadel publish`).
#
# May mint model data keys (plaintext + wrapped), sign manifests with the ed25519
# signing key, read key metadata (latest_version, public keys), rotate both keys and
# rewrap old wrapped data keys onto the newest key version. It may NOT decrypt:
# rewrap never exposes plaintext, and a publisher never needs an old data key back.

# Fresh data key for sealing one artifact (plaintext is wiped right after use).
path "transit/datakey/plaintext/citadel-models" {
  capabilities = ["update"]
}

# Move `vault:vN:` wrapped keys to the latest version without seeing the plaintext.
path "transit/rewrap/citadel-models" {
  capabilities = ["update"]
}

# Key metadata: latest_version, min_decryption_version.
path "transit/keys/citadel-models" {
  capabilities = ["read"]
}

path "transit/keys/citadel-models/rotate" {
  capabilities = ["update"]
}

# Manifest signatures (ed25519 ignores the hash algorithm suffix).
path "transit/sign/citadel-signing" {
  capabilities = ["update"]
}

# Public keys of every signing key version, for pinning on the workers.
path "transit/keys/citadel-signing" {
  capabilities = ["read"]
}

path "transit/keys/citadel-signing/rotate" {
  capabilities = ["update"]
}
