export {
  type ResolvedVaultConfig,
  resolveVaultConfig,
  VAULT_DEFAULTS,
  type VaultAuthConfig,
  type VaultKeyProviderConfig,
} from "./config.js";
export {
  createVaultKeyProvider,
  type VaultHealth,
  VaultKeyProvider,
  type VaultLogger,
  type VaultTokenStatus,
} from "./vault-key-provider.js";
