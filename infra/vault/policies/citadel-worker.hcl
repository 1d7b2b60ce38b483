# Citadel GPU worker.
#
# May ONLY unwrap model data keys and read the signing key's public keys (to verify
# manifests). No datakey, no encrypt, no sign, no rewrap, no rotate: a compromised
# worker can neither mint keys nor forge a signed manifest. Token lookup-self and
# renew-self come from Vault's built-in `default` policy.

path "transit/decrypt/citadel-models" {
  capabilities = ["update"]
}

path "transit/keys/citadel-signing" {
  capabilities = ["read"]
}
