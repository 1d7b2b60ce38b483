import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { CitadelError, coerceError } from "@citadel/contracts";
import NodeVault from "node-vault";
import type { DataKey, KeyProvider, ManifestSigner, SignerPublicKey } from "../provider.js";
import { isValidKeyName, type ResolvedVaultConfig, resolveVaultConfig, type VaultKeyProviderConfig } from "./config.js";
import { toCitadelError, VaultDeadlineError, type VaultOperation, vaultStatus } from "./errors.js";
import { copyKey, KeyCache } from "./key-cache.js";

const SECOND = 1000;
/** Renew (or log in again) at this fraction of the token's TTL. */
const RENEW_AT = 2 / 3;
/** Below this fraction of the login TTL, renewal has hit max TTL: log in again instead. */
const RELOGIN_BELOW = 1 / 3;
const RETRY_MIN_MS = 1 * SECOND;
const RETRY_MAX_MS = 30 * SECOND;
const SWEEP_MAX_MS = 60 * SECOND;
/** setTimeout fires at once beyond 2^31-1 ms, so longer delays are clamped (an early renewal is harmless). */
const MAX_TIMER_MS = 2_147_483_647;

const WRAPPED = /^vault:v(\d+):[A-Za-z0-9+/]+={0,2}$/;
const SIGNATURE = /^vault:v(\d+):([A-Za-z0-9+/]+={0,2})$/;

/** The structured-logger subset the provider uses (pino's `logger.warn(obj, msg)` fits). */
export interface VaultLogger {
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
}

const silentLogger: VaultLogger = {
  info: () => undefined,
  warn: () => undefined,
};

export interface VaultTokenStatus {
  method: "token" | "approle" | "kubernetes";
  authenticated: boolean;
  renewable: boolean;
  /** When the current token expires; null when it never does (or is unknown). */
  expiresAt: Date | null;
  logins: number;
  renewals: number;
  renewalFailures: number;
}

export interface VaultHealth {
  initialized: boolean;
  sealed: boolean;
  standby: boolean;
  version: string | undefined;
}

type Json = Record<string, unknown>;

function obj(value: unknown): Json | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Json) : undefined;
}

function unexpected(op: VaultOperation, what: string): CitadelError {
  return new CitadelError("INTERNAL", `unexpected Vault response to ${op}: ${what}`, { operation: op });
}

function dataField(op: VaultOperation, body: unknown, field: string): unknown {
  const value = obj(obj(body)?.data)?.[field];
  if (value === undefined || value === null) throw unexpected(op, `missing data.${field}`);
  return value;
}

function dataString(op: VaultOperation, body: unknown, field: string): string {
  const value = dataField(op, body, field);
  if (typeof value !== "string") throw unexpected(op, `data.${field} is not a string`);
  return value;
}

/** Decodes base64 key material into its own unpooled buffer and wipes the intermediate one. */
function decodeKey(op: VaultOperation, b64: string): Buffer {
  const tmp = Buffer.from(b64, "base64");
  const key = copyKey(tmp);
  tmp.fill(0);
  if (key.length === 0) throw unexpected(op, "empty key");
  return key;
}

function cacheId(keyName: string, wrapped: string): string {
  return createHash("sha256").update(keyName).update("\0").update(wrapped).digest("hex");
}

/**
 * Citadel's production key service: Vault Transit over HTTP (node-vault). Implements both
 * the data-key provider and the manifest signer. Tokens are renewed before expiry with
 * unref'd timers; unwrapped data keys are cached (bounded, wiped on exit) so already-seen
 * models keep loading through a Vault outage. Every failure is a CitadelError that names
 * no secret: VAULT_UNAVAILABLE (unreachable, timeout, 5xx, sealed), VAULT_DENIED (403),
 * KEY_UNWRAP_FAILED (decrypt/rewrap refused the ciphertext).
 */
export class VaultKeyProvider implements KeyProvider, ManifestSigner {
  readonly kind = "vault" as const;
  private readonly client: NodeVault.client;
  private readonly cache: KeyCache;
  private token = "";
  private jwt = "";
  private tokenExpiresAt: number | null = null;
  private tokenRenewable = false;
  private loginTtlSec = 0;
  private refreshTimer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private retryDelayMs = RETRY_MIN_MS;
  private loginInFlight: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  private readonly counters = { logins: 0, renewals: 0, renewalFailures: 0 };

  constructor(
    private readonly config: ResolvedVaultConfig,
    private readonly logger: VaultLogger = silentLogger,
  ) {
    this.client = NodeVault({
      endpoint: config.addr,
      apiVersion: "v1",
      ...(config.namespace ? { namespace: config.namespace } : {}),
      requestOptions: { timeout: config.requestTimeoutMs },
    });
    // node-vault falls back to $VAULT_TOKEN; the provider sends its own token per request.
    this.client.token = "";
    this.cache = new KeyCache(config.keyCacheTtlMs, config.keyCacheMax);
    if (config.keyCacheTtlMs > 0) {
      this.sweepTimer = setInterval(() => this.cache.sweep(), Math.min(config.keyCacheTtlMs, SWEEP_MAX_MS));
      this.sweepTimer.unref();
    }
  }

  /** Authenticates (or, for a static token, looks it up) and schedules renewal. */
  async start(): Promise<void> {
    this.assertOpen();
    await this.login();
  }

  // ---- KeyProvider -------------------------------------------------------------------

  async generateDataKey(keyName: string): Promise<DataKey> {
    this.assertKeyName(keyName);
    const body = await this.request("datakey", "write", `${this.config.transitMount}/datakey/plaintext/${keyName}`, {
      bits: 256,
    });
    const wrapped = dataString("datakey", body, "ciphertext");
    if (!WRAPPED.test(wrapped)) throw unexpected("datakey", "ciphertext is not vault:vN:…");
    const plaintext = decodeKey("datakey", dataString("datakey", body, "plaintext"));
    if (plaintext.length !== 32) {
      plaintext.fill(0);
      throw unexpected("datakey", "data key is not 256 bits");
    }
    return { plaintext, wrapped };
  }

  async unwrapDataKey(keyName: string, wrapped: string): Promise<Buffer> {
    this.assertKeyName(keyName);
    this.assertWrapped(wrapped);
    const id = cacheId(keyName, wrapped);
    const cached = this.cache.get(id);
    if (cached) return cached;
    const body = await this.request("decrypt", "write", `${this.config.transitMount}/decrypt/${keyName}`, {
      ciphertext: wrapped,
    });
    const key = decodeKey("decrypt", dataString("decrypt", body, "plaintext"));
    this.cache.put(id, copyKey(key));
    return key;
  }

  async rewrapDataKey(keyName: string, wrapped: string): Promise<string> {
    this.assertKeyName(keyName);
    this.assertWrapped(wrapped);
    const body = await this.request("rewrap", "write", `${this.config.transitMount}/rewrap/${keyName}`, {
      ciphertext: wrapped,
    });
    const rewrapped = dataString("rewrap", body, "ciphertext");
    if (!WRAPPED.test(rewrapped)) throw unexpected("rewrap", "ciphertext is not vault:vN:…");
    return rewrapped;
  }

  async rotateKey(keyName: string): Promise<number> {
    this.assertKeyName(keyName);
    await this.request("rotate", "write", `${this.config.transitMount}/keys/${keyName}/rotate`, {});
    const body = await this.request("read-key", "read", `${this.config.transitMount}/keys/${keyName}`);
    const latest = dataField("read-key", body, "latest_version");
    if (typeof latest !== "number" || !Number.isInteger(latest)) throw unexpected("read-key", "bad latest_version");
    return latest;
  }

  // ---- ManifestSigner ----------------------------------------------------------------

  async sign(payload: Buffer): Promise<{ keyId: string; signature: string }> {
    const body = await this.request("sign", "write", `${this.config.transitMount}/sign/${this.config.signingKey}`, {
      input: payload.toString("base64"),
    });
    const match = SIGNATURE.exec(dataString("sign", body, "signature"));
    if (!match?.[1] || !match[2]) throw unexpected("sign", "signature is not vault:vN:…");
    return { keyId: this.signerKeyId(Number.parseInt(match[1], 10)), signature: match[2] };
  }

  async publicKeys(): Promise<SignerPublicKey[]> {
    const body = await this.request("read-key", "read", `${this.config.transitMount}/keys/${this.config.signingKey}`);
    const type = dataField("read-key", body, "type");
    if (type !== "ed25519") throw unexpected("read-key", `signing key type is ${String(type)}, not ed25519`);
    const keys = obj(dataField("read-key", body, "keys"));
    if (!keys) throw unexpected("read-key", "data.keys is not an object");
    const out: { version: number; key: SignerPublicKey }[] = [];
    for (const [versionText, entry] of Object.entries(keys)) {
      const version = Number.parseInt(versionText, 10);
      const publicKey = obj(entry)?.public_key;
      if (!Number.isInteger(version) || typeof publicKey !== "string") {
        throw unexpected("read-key", `key version ${versionText} has no public_key`);
      }
      if (Buffer.from(publicKey, "base64").length !== 32) {
        throw unexpected("read-key", `key version ${versionText} is not a raw ed25519 public key`);
      }
      out.push({ version, key: { keyId: this.signerKeyId(version), publicKey } });
    }
    return out.sort((a, b) => a.version - b.version).map((e) => e.key);
  }

  /** `vault:<mount>/<signingKey>:vN`, the id written next to each signature. */
  signerKeyId(version: number): string {
    return `vault:${this.config.transitMount}/${this.config.signingKey}:v${version}`;
  }

  // ---- status ------------------------------------------------------------------------

  /** Vault's `sys/health` (no token needed). Throws VAULT_UNAVAILABLE when unreachable. */
  async health(): Promise<VaultHealth> {
    let body: unknown;
    try {
      body = await this.withDeadline(this.client.read("sys/health?standbyok=true&uninitcode=200&sealedcode=200"));
    } catch (err) {
      throw this.mapError("health", err);
    }
    const b = obj(body) ?? {};
    return {
      initialized: b.initialized === true,
      sealed: b.sealed === true,
      standby: b.standby === true,
      version: typeof b.version === "string" ? b.version : undefined,
    };
  }

  /**
   * Whether Vault can serve now: `sys/health` answers (within the request timeout) and
   * Vault is unsealed. A failed health call is the answer "no", so this never throws;
   * the worker's citadel_vault_up gauge reads it at scrape time.
   */
  async reachable(): Promise<boolean> {
    return this.health().then(
      (h) => !h.sealed,
      () => false,
    );
  }

  tokenStatus(): VaultTokenStatus {
    return {
      method: this.config.auth.method,
      authenticated: this.token !== "",
      renewable: this.tokenRenewable,
      expiresAt: this.tokenExpiresAt === null ? null : new Date(this.tokenExpiresAt),
      ...this.counters,
    };
  }

  /** Stops timers and wipes every cached key. Idempotent. */
  close(): Promise<void> {
    this.closing ??= Promise.resolve().then(() => {
      try {
        clearTimeout(this.refreshTimer);
        clearInterval(this.sweepTimer);
      } catch (err) {
        this.logger.warn({ err: coerceError(err).name }, "vault: stopping timers failed");
      }
      try {
        this.cache.clear();
      } catch (err) {
        this.logger.warn({ err: coerceError(err).name }, "vault: wiping the key cache failed");
      }
      this.token = "";
      this.jwt = "";
    });
    return this.closing;
  }

  // ---- auth --------------------------------------------------------------------------

  private get canLogin(): boolean {
    return this.config.auth.method !== "token";
  }

  private secrets(): string[] {
    const auth = this.config.auth;
    const out = [this.token, this.jwt];
    if (auth.method === "token") out.push(auth.token);
    if (auth.method === "approle") out.push(auth.secretId, auth.roleId);
    return out.filter((s) => s.length > 0);
  }

  /** Single-flight login (or token lookup for the token method). */
  private login(): Promise<void> {
    this.loginInFlight ??= this.doLogin().finally(() => {
      this.loginInFlight = undefined;
    });
    return this.loginInFlight;
  }

  private async doLogin(): Promise<void> {
    const auth = this.config.auth;
    if (auth.method === "token") {
      this.token = auth.token;
      await this.lookupStaticToken();
      return;
    }
    let path: string;
    let body: Json;
    if (auth.method === "approle") {
      path = `auth/${auth.mount ?? "approle"}/login`;
      body = { role_id: auth.roleId, secret_id: auth.secretId };
    } else {
      try {
        this.jwt = (await readFile(auth.jwtPath, "utf8")).trim();
      } catch (err) {
        throw new CitadelError("VAULT_DENIED", "cannot read the Kubernetes service-account token file", {
          operation: "login",
          reason: (err as NodeJS.ErrnoException).code ?? "unknown",
        });
      }
      // Explicit mount: node-vault's kubernetesLogin without mount_point posts to /v1/auth//login.
      path = `auth/${auth.mount ?? "kubernetes"}/login`;
      body = { role: auth.role, jwt: this.jwt };
    }
    let response: unknown;
    try {
      response = await this.withDeadline(this.client.write(path, body));
    } catch (err) {
      throw this.mapError("login", err);
    } finally {
      this.jwt = "";
    }
    const authBlock = obj(obj(response)?.auth);
    const token = authBlock?.client_token;
    if (typeof token !== "string" || token === "") throw unexpected("login", "no auth.client_token");
    const ttl = typeof authBlock?.lease_duration === "number" ? authBlock.lease_duration : 0;
    this.token = token;
    this.loginTtlSec = ttl;
    this.counters.logins++;
    this.retryDelayMs = RETRY_MIN_MS;
    this.adoptLease(ttl, authBlock?.renewable === true);
    this.logger.info({ method: auth.method, ttlSeconds: ttl, renewable: this.tokenRenewable }, "vault: logged in");
  }

  /** A static token: learn its TTL; a token that cannot look itself up is simply used. */
  private async lookupStaticToken(): Promise<void> {
    let response: unknown;
    try {
      response = await this.withDeadline(
        this.client.read("auth/token/lookup-self", { headers: { "X-Vault-Token": this.token } }),
      );
    } catch (err) {
      const mapped = this.mapError("lookup-self", err);
      if (vaultStatus(err) === 403) {
        // Either a bad token (every call will say VAULT_DENIED) or one without the default
        // policy; either way there is nothing to renew.
        this.logger.warn({ code: mapped.code }, "vault: token cannot look itself up; renewal disabled");
        this.adoptLease(0, false);
        return;
      }
      throw mapped;
    }
    const data = obj(obj(response)?.data);
    const ttl = typeof data?.ttl === "number" ? data.ttl : 0;
    this.loginTtlSec = ttl;
    this.adoptLease(ttl, data?.renewable === true);
  }

  private adoptLease(ttlSec: number, renewable: boolean): void {
    this.tokenRenewable = renewable;
    this.tokenExpiresAt = ttlSec > 0 ? Date.now() + ttlSec * SECOND : null;
    if (ttlSec <= 0) {
      this.clearRefresh();
      return;
    }
    // Near max TTL a renewal cannot extend the token: a login method logs in again instead.
    const relogin = this.canLogin && (!renewable || ttlSec < this.loginTtlSec * RELOGIN_BELOW);
    if (!renewable && !this.canLogin) {
      this.clearRefresh(); // a non-renewable static token is used until it expires
      return;
    }
    this.scheduleRefresh(ttlSec * SECOND * RENEW_AT, relogin ? "login" : "renew");
  }

  private clearRefresh(): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
  }

  private scheduleRefresh(delayMs: number, action: "renew" | "login"): void {
    this.clearRefresh();
    if (this.closing) return;
    this.refreshTimer = setTimeout(
      () => {
        void this.refresh(action);
      },
      Math.min(Math.max(0, delayMs), MAX_TIMER_MS),
    );
    this.refreshTimer.unref();
  }

  private async refresh(action: "renew" | "login"): Promise<void> {
    if (this.closing) return;
    if (action === "renew") {
      try {
        const response = await this.withDeadline(
          this.client.write("auth/token/renew-self", {}, { headers: { "X-Vault-Token": this.token } }),
        );
        const authBlock = obj(obj(response)?.auth);
        const ttl = typeof authBlock?.lease_duration === "number" ? authBlock.lease_duration : 0;
        this.counters.renewals++;
        this.retryDelayMs = RETRY_MIN_MS;
        this.adoptLease(ttl, authBlock?.renewable === true);
        return;
      } catch (err) {
        this.counters.renewalFailures++;
        const mapped = this.mapError("renew-self", err);
        this.logger.warn({ code: mapped.code, status: vaultStatus(err) }, "vault: token renewal failed");
        if (!this.canLogin) {
          this.retryLater("renew");
          return;
        }
      }
    }
    if (this.closing) return;
    try {
      await this.login();
    } catch (err) {
      const mapped = this.mapError("login", err);
      this.logger.warn({ code: mapped.code }, "vault: login failed; retrying");
      this.retryLater("login");
    }
  }

  /** Backs off (1 s doubling to 30 s) but never past the token's expiry for a renewal. */
  private retryLater(action: "renew" | "login"): void {
    const delay = this.retryDelayMs;
    this.retryDelayMs = Math.min(this.retryDelayMs * 2, RETRY_MAX_MS);
    if (action === "renew" && this.tokenExpiresAt !== null && Date.now() + delay >= this.tokenExpiresAt) {
      this.logger.warn({}, "vault: static token will expire before it can be renewed");
      return;
    }
    this.scheduleRefresh(delay, action);
  }

  // ---- requests ----------------------------------------------------------------------

  private async request(op: VaultOperation, kind: "read" | "write", path: string, body?: Json): Promise<unknown> {
    this.assertOpen();
    try {
      if (this.loginInFlight) await this.loginInFlight;
      if (this.token === "" || (this.canLogin && this.tokenExpiresAt !== null && this.tokenExpiresAt <= Date.now())) {
        await this.login();
      }
      try {
        return await this.send(kind, path, body);
      } catch (err) {
        // A 403 from a login method may mean the token died (revoked, Vault restarted):
        // if lookup-self agrees, log in again once and retry.
        if (vaultStatus(err) !== 403 || !this.canLogin || (await this.tokenAlive())) throw err;
        await this.login();
        return await this.send(kind, path, body);
      }
    } catch (err) {
      throw this.mapError(op, err);
    }
  }

  private send(kind: "read" | "write", path: string, body?: Json): Promise<unknown> {
    const requestOptions = { headers: { "X-Vault-Token": this.token } };
    return this.withDeadline(
      kind === "read" ? this.client.read(path, requestOptions) : this.client.write(path, body ?? {}, requestOptions),
    );
  }

  private async tokenAlive(): Promise<boolean> {
    try {
      await this.withDeadline(this.client.read("auth/token/lookup-self", { headers: { "X-Vault-Token": this.token } }));
      return true;
    } catch (err) {
      return vaultStatus(err) !== 403;
    }
  }

  private withDeadline<T>(promise: Promise<T>): Promise<T> {
    const timeoutMs = this.config.requestTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new VaultDeadlineError(timeoutMs)), timeoutMs + 100);
      timer.unref();
    });
    return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
  }

  private mapError(op: VaultOperation, err: unknown): CitadelError {
    return toCitadelError(op, err, this.secrets(), this.config.requestTimeoutMs);
  }

  private assertOpen(): void {
    if (this.closing) throw new CitadelError("INTERNAL", "the Vault key provider is closed");
  }

  private assertKeyName(keyName: string): void {
    this.assertOpen();
    if (!isValidKeyName(keyName)) {
      throw new CitadelError("VALIDATION_FAILED", "invalid Transit key name", { field: "keyName" });
    }
  }

  private assertWrapped(wrapped: string): void {
    if (!WRAPPED.test(wrapped)) {
      throw new CitadelError("KEY_UNWRAP_FAILED", "wrapped data key is not a Vault ciphertext (vault:vN:…)");
    }
  }
}

/**
 * Builds a VaultKeyProvider and authenticates before returning, so a worker with bad
 * credentials or no Vault fails at start (VAULT_DENIED / VAULT_UNAVAILABLE).
 */
export async function createVaultKeyProvider(
  config: VaultKeyProviderConfig,
  logger?: VaultLogger,
): Promise<VaultKeyProvider> {
  const provider = new VaultKeyProvider(resolveVaultConfig(config), logger);
  try {
    await provider.start();
  } catch (err) {
    await provider.close();
    throw err;
  }
  return provider;
}
