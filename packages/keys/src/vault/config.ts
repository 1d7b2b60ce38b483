import { CitadelError } from "@citadel/contracts";

const SECOND = 1000;
const MINUTE = 60 * SECOND;

/** How the provider authenticates to Vault. */
export type VaultAuthConfig =
  /** A static token (dev, CI). Renewed when renewable; otherwise used until it expires. */
  | { method: "token"; token: string }
  /** AppRole login (`auth/<mount>/login`, mount default `approle`). */
  | { method: "approle"; roleId: string; secretId: string; mount?: string }
  /** Kubernetes service-account login; the JWT is re-read from `jwtPath` at every login. */
  | { method: "kubernetes"; role: string; jwtPath: string; mount?: string };

export interface VaultKeyProviderConfig {
  /** Vault address, e.g. `https://vault.citadel.svc:8200`. */
  addr: string;
  auth: VaultAuthConfig;
  /** Transit mount path. Default `transit`. */
  transitMount?: string;
  /** ed25519 Transit key that signs manifests. Default `citadel-signing`. */
  signingKey?: string;
  /** Per-request deadline; Vault calls never wait longer. Default 5 s. */
  requestTimeoutMs?: number;
  /** How long an unwrapped data key stays cached in memory. Default 10 min; 0 disables the cache. */
  keyCacheTtlMs?: number;
  /** Most cached data keys; the least recently used is wiped first. Default 256. */
  keyCacheMax?: number;
  /** Vault Enterprise namespace (`X-Vault-Namespace`). */
  namespace?: string;
}

export interface ResolvedVaultConfig {
  addr: string;
  auth: VaultAuthConfig;
  transitMount: string;
  signingKey: string;
  requestTimeoutMs: number;
  keyCacheTtlMs: number;
  keyCacheMax: number;
  namespace: string | undefined;
}

export const VAULT_DEFAULTS = {
  transitMount: "transit",
  signingKey: "citadel-signing",
  requestTimeoutMs: 5 * SECOND,
  keyCacheTtlMs: 10 * MINUTE,
  keyCacheMax: 256,
} as const;

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const MOUNT = /^[A-Za-z0-9][A-Za-z0-9_.-]*(\/[A-Za-z0-9][A-Za-z0-9_.-]*)*$/;

function invalid(field: string, message: string): CitadelError {
  return new CitadelError("VALIDATION_FAILED", `invalid Vault config: ${field} ${message}`, { field });
}

/** Transit key names go into URL paths: letters, digits, `_ . -` only. */
export function isValidKeyName(name: string): boolean {
  return NAME.test(name) && name.length <= 128;
}

export function resolveVaultConfig(config: VaultKeyProviderConfig): ResolvedVaultConfig {
  let url: URL;
  try {
    url = new URL(config.addr);
  } catch {
    throw invalid("addr", "is not a URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw invalid("addr", "must be http(s)");
  const transitMount = (config.transitMount ?? VAULT_DEFAULTS.transitMount).replace(/^\/+|\/+$/g, "");
  if (!MOUNT.test(transitMount)) throw invalid("transitMount", "is not a mount path");
  const signingKey = config.signingKey ?? VAULT_DEFAULTS.signingKey;
  if (!isValidKeyName(signingKey)) throw invalid("signingKey", "is not a key name");
  const requestTimeoutMs = config.requestTimeoutMs ?? VAULT_DEFAULTS.requestTimeoutMs;
  if (!Number.isFinite(requestTimeoutMs) || requestTimeoutMs <= 0) throw invalid("requestTimeoutMs", "must be > 0");
  const keyCacheTtlMs = config.keyCacheTtlMs ?? VAULT_DEFAULTS.keyCacheTtlMs;
  if (!Number.isFinite(keyCacheTtlMs) || keyCacheTtlMs < 0) throw invalid("keyCacheTtlMs", "must be >= 0");
  const keyCacheMax = config.keyCacheMax ?? VAULT_DEFAULTS.keyCacheMax;
  if (!Number.isInteger(keyCacheMax) || keyCacheMax < 1) throw invalid("keyCacheMax", "must be a positive integer");
  const auth = config.auth;
  switch (auth.method) {
    case "token":
      if (!auth.token) throw invalid("auth.token", "is empty");
      break;
    case "approle":
      if (!auth.roleId || !auth.secretId) throw invalid("auth", "needs roleId and secretId");
      if (auth.mount !== undefined && !MOUNT.test(auth.mount)) throw invalid("auth.mount", "is not a mount path");
      break;
    case "kubernetes":
      if (!auth.role || !auth.jwtPath) throw invalid("auth", "needs role and jwtPath");
      if (auth.mount !== undefined && !MOUNT.test(auth.mount)) throw invalid("auth.mount", "is not a mount path");
      break;
    default:
      throw invalid("auth.method", "is unknown");
  }
  return {
    addr: url.toString().replace(/\/+$/, ""),
    auth,
    transitMount,
    signingKey,
    requestTimeoutMs,
    keyCacheTtlMs,
    keyCacheMax,
    namespace: config.namespace,
  };
}
