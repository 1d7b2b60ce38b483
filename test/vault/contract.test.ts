/**
 * One Vault contract, run against whichever Vault is available (docs/contract.md#runtime-boundaries): a real Vault at
 * VAULT_ADDR, else hashicorp/vault in testcontainers, else the Vault-API-compatible test
 * server. The same HTTP calls set everything up (engines, policies from
 * infra/vault/policies, AppRole) so each backend is held to the same behaviour.
 */
import { createPublicKey, randomBytes, verify } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { CitadelError } from "@citadel/contracts";
import { createVaultKeyProvider, type VaultKeyProvider, type VaultKeyProviderConfig } from "@citadel/keys";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { POLICY_DIR } from "../support/vault-server/index.js";
import { startVaultBackend } from "./backends.js";
import { startTcpProxy, type TcpProxy } from "./tcp-proxy.js";

const backend = await startVaultBackend();
console.warn(`[vault contract] backend: ${backend.kind} — ${backend.description}`);

const run = randomBytes(4).toString("hex");
const MODELS = `citadel-models-${run}`;
const SIGNING = `citadel-signing-${run}`;
const WORKER_POLICY = `citadel-worker-${run}`;
const PUBLISHER_POLICY = `citadel-publisher-${run}`;
const WORKER_ROLE = `citadel-worker-${run}`;
const TIMEOUT_MS = 2_000;

/** Secrets minted during the run; no error may ever contain one. */
const secrets = new Set<string>([backend.rootToken]);
const errors: CitadelError[] = [];
const providers: VaultKeyProvider[] = [];
let proxy: TcpProxy | undefined;

interface ApiResult {
  status: number;
  body: Record<string, unknown>;
}

async function api(method: string, path: string, body?: object, token = backend.rootToken): Promise<ApiResult> {
  const res = await fetch(`${backend.addr}/v1/${path}`, {
    method,
    headers: { "X-Vault-Token": token, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

async function ok(method: string, path: string, body?: object): Promise<Record<string, unknown>> {
  const res = await api(method, path, body);
  if (res.status >= 300) throw new Error(`${method} ${path} -> ${res.status} ${JSON.stringify(res.body.errors)}`);
  return res.body;
}

/** Enables an engine unless it already is (an external Vault may have it). */
async function ensureMounted(path: string, type: string): Promise<void> {
  const res = await api("POST", path, { type });
  const already = JSON.stringify(res.body.errors ?? "").includes("already in use");
  if (res.status >= 300 && !already) throw new Error(`enable ${path} -> ${res.status} ${JSON.stringify(res.body)}`);
}

/** The repo's policy files with this run's key names, written through the API. */
function runPolicy(file: string): string {
  return readFileSync(join(POLICY_DIR, file), "utf8")
    .replaceAll("citadel-models", MODELS)
    .replaceAll("citadel-signing", SIGNING);
}

async function newToken(policies: string[], extra: object = {}): Promise<string> {
  const body = await ok("POST", "auth/token/create", { policies, ttl: "30m", ...extra });
  const token = (body.auth as { client_token: string }).client_token;
  secrets.add(token);
  return token;
}

async function provider(auth: VaultKeyProviderConfig["auth"], extra: Partial<VaultKeyProviderConfig> = {}) {
  const p = await createVaultKeyProvider({
    addr: backend.addr,
    auth,
    transitMount: "transit",
    signingKey: SIGNING,
    requestTimeoutMs: TIMEOUT_MS,
    ...extra,
  });
  providers.push(p);
  return p;
}

async function rejection(promise: Promise<unknown>): Promise<CitadelError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(CitadelError);
    errors.push(err as CitadelError);
    return err as CitadelError;
  }
  throw new Error("expected a rejection");
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

beforeAll(async () => {
  await ensureMounted("sys/mounts/transit", "transit");
  await ensureMounted("sys/auth/approle", "approle");
  const files = readdirSync(POLICY_DIR).filter((f) => f.endsWith(".hcl"));
  expect(files.map((f) => basename(f, ".hcl")).sort()).toEqual(["citadel-publisher", "citadel-worker"]);
  await ok("PUT", `sys/policies/acl/${WORKER_POLICY}`, { policy: runPolicy("citadel-worker.hcl") });
  await ok("PUT", `sys/policies/acl/${PUBLISHER_POLICY}`, { policy: runPolicy("citadel-publisher.hcl") });
});

afterAll(async () => {
  for (const p of providers) await p.close();
  await proxy?.stop();
  // Leave an external Vault as we found it (best effort; a dev Vault dies with its container).
  if (backend.kind === "external") {
    for (const key of [MODELS, SIGNING]) {
      await api("POST", `transit/keys/${key}/config`, { deletion_allowed: true });
      await api("DELETE", `transit/keys/${key}`);
    }
    await api("DELETE", `auth/approle/role/${WORKER_ROLE}`);
    await api("DELETE", `sys/policies/acl/${WORKER_POLICY}`);
    await api("DELETE", `sys/policies/acl/${PUBLISHER_POLICY}`);
  }
  await backend.stop();
});

describe(`Vault contract [${backend.kind}]`, () => {
  it("health: sys/health answers 200 when active, honours activecode, and the provider reads it", async () => {
    const health = await fetch(`${backend.addr}/v1/sys/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ initialized: true, sealed: false, standby: false });
    expect((await fetch(`${backend.addr}/v1/sys/health?activecode=299`)).status).toBe(299);
    const vault = await provider({ method: "token", token: backend.rootToken });
    expect(await vault.health()).toMatchObject({ initialized: true, sealed: false });
  });

  it("transit: creates aes256-gcm96 and ed25519 keys and reads them back", async () => {
    await ok("POST", `transit/keys/${MODELS}`, { type: "aes256-gcm96" });
    await ok("POST", `transit/keys/${SIGNING}`, { type: "ed25519" });
    const models = (await ok("GET", `transit/keys/${MODELS}`)).data as Record<string, unknown>;
    expect(models).toMatchObject({ name: MODELS, type: "aes256-gcm96", latest_version: 1, min_decryption_version: 1 });
    expect(typeof (models.keys as Record<string, unknown>)["1"]).toBe("number");
    const signing = (await ok("GET", `transit/keys/${SIGNING}`)).data as Record<string, unknown>;
    expect(signing).toMatchObject({ type: "ed25519", latest_version: 1, supports_signing: true });
    const v1 = (signing.keys as Record<string, { public_key: string; name: string }>)["1"];
    expect(v1?.name).toBe("ed25519");
    expect(Buffer.from(v1?.public_key ?? "", "base64")).toHaveLength(32);
    expect((await api("GET", `transit/keys/missing-${run}`)).status).toBe(404);
  });

  it("datakey -> decrypt round trip through VaultKeyProvider", async () => {
    const publisher = await provider({ method: "token", token: await newToken([PUBLISHER_POLICY]) });
    const { plaintext, wrapped } = await publisher.generateDataKey(MODELS);
    expect(plaintext).toHaveLength(32);
    expect(wrapped).toMatch(/^vault:v1:/);
    const root = await provider({ method: "token", token: backend.rootToken }, { keyCacheTtlMs: 0 });
    expect((await root.unwrapDataKey(MODELS, wrapped)).equals(plaintext)).toBe(true);
    plaintext.fill(0);
  });

  it("rewrap after rotate moves vault:v1: to vault:v2: and both still decrypt", async () => {
    const publisher = await provider({ method: "token", token: await newToken([PUBLISHER_POLICY]) });
    const { plaintext, wrapped } = await publisher.generateDataKey(MODELS);
    expect(wrapped).toMatch(/^vault:v1:/);
    expect(await publisher.rotateKey(MODELS)).toBe(2);
    const rewrapped = await publisher.rewrapDataKey(MODELS, wrapped);
    expect(rewrapped).toMatch(/^vault:v2:/);
    const worker = await provider({ method: "token", token: await newToken([WORKER_POLICY]) }, { keyCacheTtlMs: 0 });
    expect((await worker.unwrapDataKey(MODELS, wrapped)).equals(plaintext)).toBe(true);
    expect((await worker.unwrapDataKey(MODELS, rewrapped)).equals(plaintext)).toBe(true);
  });

  it("sign -> verify locally with node:crypto against publicKeys(); Vault's verify agrees", async () => {
    const publisher = await provider({ method: "token", token: await newToken([PUBLISHER_POLICY]) });
    const payload = Buffer.from(JSON.stringify({ name: "ocr-cls", version: "1.0.0", run }));
    const { keyId, signature } = await publisher.sign(payload);
    expect(keyId).toBe(`vault:transit/${SIGNING}:v1`);

    const worker = await provider({ method: "token", token: await newToken([WORKER_POLICY]) });
    const pinned = await worker.publicKeys();
    const pub = pinned.find((k) => k.keyId === keyId);
    expect(pub).toBeDefined();
    const key = createPublicKey({
      key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(pub?.publicKey ?? "", "base64").toString("base64url") },
      format: "jwk",
    });
    expect(verify(null, payload, key, Buffer.from(signature, "base64"))).toBe(true);
    expect(verify(null, Buffer.concat([payload, Buffer.from(" ")]), key, Buffer.from(signature, "base64"))).toBe(false);
    const check = await ok("POST", `transit/verify/${SIGNING}`, {
      input: payload.toString("base64"),
      signature: `vault:v1:${signature}`,
    });
    expect((check.data as { valid: boolean }).valid).toBe(true);
  });

  it("AppRole: logs in, renews the token before expiry, keeps working past the first TTL", async () => {
    await ok("POST", `auth/approle/role/${WORKER_ROLE}`, {
      token_policies: [WORKER_POLICY],
      // The provider renews at 2/3 of the TTL: the renewal has 3 s to land before the token
      // expires, so a loaded machine (or a remote Vault) that stalls a second does not lose it.
      token_ttl: "9s",
      token_max_ttl: "5m",
    });
    const roleId = ((await ok("GET", `auth/approle/role/${WORKER_ROLE}/role-id`)).data as { role_id: string }).role_id;
    const secretId = ((await ok("POST", `auth/approle/role/${WORKER_ROLE}/secret-id`)).data as { secret_id: string })
      .secret_id;
    secrets.add(secretId);
    const publisher = await provider({ method: "token", token: await newToken([PUBLISHER_POLICY]) });
    const { wrapped, plaintext } = await publisher.generateDataKey(MODELS);

    const worker = await provider({ method: "approle", roleId, secretId }, { keyCacheTtlMs: 0 });
    expect(worker.tokenStatus()).toMatchObject({ method: "approle", authenticated: true, renewable: true, logins: 1 });
    const loggedIn = Date.now();
    // The renewal (at ~6 s), waited for; then past the 9 s TTL only that renewal keeps the token alive.
    for (let i = 0; i < 1500 && worker.tokenStatus().renewals < 1; i++) await sleep(20);
    expect(worker.tokenStatus().renewals).toBeGreaterThanOrEqual(1);
    await sleep(Math.max(0, loggedIn + 9_500 - Date.now()));
    expect(worker.tokenStatus().logins).toBe(1);
    expect((await worker.unwrapDataKey(MODELS, wrapped)).equals(plaintext)).toBe(true);

    const bad = await rejection(
      createVaultKeyProvider({ addr: backend.addr, auth: { method: "approle", roleId, secretId: `${secretId}x` } }),
    );
    expect(bad.code).toBe("VAULT_DENIED");
  });

  it("a token with ONLY the worker policy is refused a data key and sign, but can decrypt", async () => {
    const publisher = await provider({ method: "token", token: await newToken([PUBLISHER_POLICY]) });
    const { wrapped, plaintext } = await publisher.generateDataKey(MODELS);
    const workerToken = await newToken([WORKER_POLICY], { no_default_policy: true });
    const worker = await provider({ method: "token", token: workerToken });

    expect((await rejection(worker.generateDataKey(MODELS))).code).toBe("VAULT_DENIED");
    expect((await rejection(worker.sign(Buffer.from("forged manifest")))).code).toBe("VAULT_DENIED");
    expect((await rejection(worker.rewrapDataKey(MODELS, wrapped))).code).toBe("VAULT_DENIED");
    const encrypt = await api("POST", `transit/encrypt/${MODELS}`, { plaintext: "AAAA" }, workerToken);
    expect(encrypt.status).toBe(403);
    expect(encrypt.body).toEqual({ errors: ["permission denied"] });
    expect((await worker.unwrapDataKey(MODELS, wrapped)).equals(plaintext)).toBe(true);
    expect((await rejection(worker.unwrapDataKey(MODELS, `vault:v1:${"A".repeat(64)}`))).code).toBe(
      "KEY_UNWRAP_FAILED",
    );
  });

  it("a Vault that stops answering -> VAULT_UNAVAILABLE within the timeout; a cached key still unwraps", async () => {
    proxy = await startTcpProxy(backend.addr);
    const publisher = await provider({ method: "token", token: await newToken([PUBLISHER_POLICY]) });
    const seen = await publisher.generateDataKey(MODELS);
    const unseen = await publisher.generateDataKey(MODELS);
    const worker = await createVaultKeyProvider({
      addr: proxy.addr,
      auth: { method: "token", token: await newToken([WORKER_POLICY]) },
      signingKey: SIGNING,
      requestTimeoutMs: 500,
    });
    providers.push(worker);
    (await worker.unwrapDataKey(MODELS, seen.wrapped)).fill(0);

    for (const mode of ["hang", "refuse"] as const) {
      proxy.setMode(mode);
      const started = Date.now();
      const err = await rejection(worker.unwrapDataKey(MODELS, unseen.wrapped));
      expect(err.code).toBe("VAULT_UNAVAILABLE");
      // Ended by the 500 ms deadline (or at once when refused), not by a socket's own timeout.
      expect(Date.now() - started).toBeLessThan(10_000);
      expect((await worker.unwrapDataKey(MODELS, seen.wrapped)).equals(seen.plaintext)).toBe(true);
    }
    proxy.setMode("pass");
    expect((await worker.unwrapDataKey(MODELS, unseen.wrapped)).equals(unseen.plaintext)).toBe(true);
  });

  const sealNote = backend.seal
    ? ""
    : " (simulated: a proxy answers 503 as a sealed Vault does; sealing an external Vault needs VAULT_UNSEAL_KEY)";
  it(`sealed Vault -> VAULT_UNAVAILABLE within the timeout; a cached key still unwraps${sealNote}`, async () => {
    const publisher = await provider({ method: "token", token: await newToken([PUBLISHER_POLICY]) });
    const seen = await publisher.generateDataKey(MODELS);
    const unseen = await publisher.generateDataKey(MODELS);
    const sealProxy = backend.seal ? undefined : await startTcpProxy(backend.addr);
    const worker = await provider(
      { method: "token", token: await newToken([WORKER_POLICY]) },
      sealProxy ? { addr: sealProxy.addr } : {},
    );
    (await worker.unwrapDataKey(MODELS, seen.wrapped)).fill(0);

    if (backend.seal) await backend.seal();
    else sealProxy?.setMode("sealed");
    try {
      const started = Date.now();
      const err = await rejection(worker.unwrapDataKey(MODELS, unseen.wrapped));
      expect(Date.now() - started).toBeLessThan(TIMEOUT_MS);
      expect(err.code).toBe("VAULT_UNAVAILABLE");
      expect(err.details).toMatchObject({ status: 503, sealed: true });
      expect((await worker.unwrapDataKey(MODELS, seen.wrapped)).equals(seen.plaintext)).toBe(true);
      if (backend.seal) expect((await fetch(`${backend.addr}/v1/sys/health`)).status).toBe(503);
    } finally {
      if (backend.unseal) await backend.unseal();
      sealProxy?.setMode("pass");
    }
    expect((await worker.unwrapDataKey(MODELS, unseen.wrapped)).equals(unseen.plaintext)).toBe(true);
    await sealProxy?.stop();
  });

  it("errors never contain a token, secret_id or wrapped key", () => {
    expect(errors.length).toBeGreaterThanOrEqual(8);
    for (const err of errors) {
      const text = [err.message, JSON.stringify(err.toJSON()), JSON.stringify(err.details), String(err.cause)].join(
        "\n",
      );
      for (const secret of secrets) expect(text).not.toContain(secret);
      expect(text).not.toMatch(/vault:v\d+:[A-Za-z0-9+/]{8,}/);
    }
  });
});
