import { createPublicKey, generateKeyPairSync, verify } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CitadelError } from "@citadel/contracts";
import { afterEach, describe, expect, it } from "vitest";
import {
  makeServiceAccountJwt,
  POLICY_DIR,
  startVaultTestServer,
  type VaultTestServer,
} from "../../../../test/support/vault-server/index.js";
import type { VaultKeyProviderConfig } from "./config.js";
import { createVaultKeyProvider, type VaultKeyProvider } from "./vault-key-provider.js";

const MODELS = "citadel-models";
const SIGNING = "citadel-signing";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function call(server: VaultTestServer, method: string, path: string, body?: object, token = server.rootToken) {
  const res = await fetch(`${server.addr}/v1/${path}`, {
    method,
    headers: { "X-Vault-Token": token, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  if (res.status >= 300) throw new Error(`${method} ${path} -> ${res.status} ${text}`);
  return text ? (JSON.parse(text) as Record<string, unknown>) : {};
}

async function setup(): Promise<VaultTestServer> {
  const server = await startVaultTestServer({ policyDir: POLICY_DIR });
  cleanups.push(() => server.stop());
  await call(server, "POST", `transit/keys/${MODELS}`, { type: "aes256-gcm96" });
  await call(server, "POST", `transit/keys/${SIGNING}`, { type: "ed25519" });
  return server;
}

async function provider(server: VaultTestServer, overrides: Partial<VaultKeyProviderConfig> = {}) {
  const p = await createVaultKeyProvider({
    addr: server.addr,
    auth: { method: "token", token: server.rootToken },
    requestTimeoutMs: 1_000,
    ...overrides,
  });
  cleanups.push(() => p.close());
  return p;
}

async function caught(promise: Promise<unknown>): Promise<CitadelError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(CitadelError);
    return err as CitadelError;
  }
  throw new Error("expected a rejection");
}

/** Everything an error could leak through: message, details, cause, JSON form. */
function everything(err: CitadelError): string {
  return [err.message, JSON.stringify(err.toJSON()), JSON.stringify(err.details), String(err.cause), err.stack].join(
    "\n",
  );
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Token TTLs in the renewal tests: the provider renews at 2/3 of a TTL, so a renewal (or
 * a call) has a third of it (2 s) to land before the token expires, and a loaded machine
 * that stalls for a second or more does not let the token lapse under the test.
 */
const TTL_S = 6;
const TTL_MS = TTL_S * 1_000;

/** Polls until `cond` holds (bounded: a renewal that never comes fails the test, slowly). */
async function until(what: string, cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe("VaultKeyProvider over the Vault test server", () => {
  it("datakey -> decrypt round trip, rotate, rewrap v1 -> v2", async () => {
    const server = await setup();
    const vault = await provider(server);
    const { plaintext, wrapped } = await vault.generateDataKey(MODELS);
    expect(plaintext).toHaveLength(32);
    expect(wrapped).toMatch(/^vault:v1:/);
    const unwrapped = await vault.unwrapDataKey(MODELS, wrapped);
    expect(unwrapped.equals(plaintext)).toBe(true);

    expect(await vault.rotateKey(MODELS)).toBe(2);
    const rewrapped = await vault.rewrapDataKey(MODELS, wrapped);
    expect(rewrapped).toMatch(/^vault:v2:/);
    const again = await vault.unwrapDataKey(MODELS, rewrapped);
    expect(again.equals(plaintext)).toBe(true);
  });

  it("signs with ed25519; publicKeys() verifies every version's signature locally", async () => {
    const server = await setup();
    const vault = await provider(server);
    const payload = Buffer.from('{"name":"resnet","version":"1"}');
    const first = await vault.sign(payload);
    expect(first.keyId).toBe(`vault:transit/${SIGNING}:v1`);
    await vault.rotateKey(SIGNING);
    const second = await vault.sign(payload);
    expect(second.keyId).toBe(`vault:transit/${SIGNING}:v2`);

    const keys = await vault.publicKeys();
    expect(keys.map((k) => k.keyId)).toEqual([`vault:transit/${SIGNING}:v1`, `vault:transit/${SIGNING}:v2`]);
    for (const sig of [first, second]) {
      const pub = keys.find((k) => k.keyId === sig.keyId);
      expect(pub).toBeDefined();
      const keyObject = createPublicKey({
        key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(pub?.publicKey ?? "", "base64").toString("base64url") },
        format: "jwk",
      });
      expect(verify(null, payload, keyObject, Buffer.from(sig.signature, "base64"))).toBe(true);
      expect(verify(null, Buffer.from("tampered"), keyObject, Buffer.from(sig.signature, "base64"))).toBe(false);
    }
  });

  it("a worker-policy token decrypts and reads public keys but is denied datakey, sign, rewrap and rotate", async () => {
    const server = await setup();
    const publisher = await provider(server, {
      auth: { method: "token", token: server.createToken(["citadel-publisher"]) },
    });
    const { wrapped, plaintext } = await publisher.generateDataKey(MODELS);
    const workerToken = server.createToken(["citadel-worker"]);
    const worker = await provider(server, { auth: { method: "token", token: workerToken } });

    expect((await worker.unwrapDataKey(MODELS, wrapped)).equals(plaintext)).toBe(true);
    expect(await worker.publicKeys()).toHaveLength(1);
    for (const denied of [
      worker.generateDataKey(MODELS),
      worker.sign(Buffer.from("x")),
      worker.rewrapDataKey(MODELS, wrapped),
      worker.rotateKey(MODELS),
    ]) {
      const err = await caught(denied);
      expect(err.code).toBe("VAULT_DENIED");
      expect(everything(err)).not.toContain(workerToken);
    }
    // The publisher may not decrypt: rewrap never needs the plaintext.
    expect((await caught(publisher.unwrapDataKey(MODELS, wrapped))).code).toBe("VAULT_DENIED");
  });

  it("AppRole: logs in, renews at ~2/3 of the TTL and keeps working past the first TTL", async () => {
    const server = await setup();
    await call(server, "POST", "auth/approle/role/citadel-worker", {
      token_policies: ["citadel-worker"],
      token_ttl: `${TTL_S}s`,
      token_max_ttl: "1m",
    });
    const roleId = (await call(server, "GET", "auth/approle/role/citadel-worker/role-id")).data as { role_id: string };
    const secret = (await call(server, "POST", "auth/approle/role/citadel-worker/secret-id")).data as {
      secret_id: string;
    };
    const admin = await provider(server);
    const { wrapped } = await admin.generateDataKey(MODELS);

    const vault = await provider(server, {
      auth: { method: "approle", roleId: roleId.role_id, secretId: secret.secret_id },
      keyCacheTtlMs: 0,
    });
    expect(vault.tokenStatus()).toMatchObject({ method: "approle", authenticated: true, renewable: true, logins: 1 });
    const loggedIn = Date.now();
    await until("a renewal", () => vault.tokenStatus().renewals >= 1);
    // Past the first TTL, still on the first login: the renewal kept the token alive.
    await sleep(Math.max(0, loggedIn + TTL_MS + 500 - Date.now()));
    expect(vault.tokenStatus().logins).toBe(1);
    expect(server.requests.some((r) => r.path === "auth/token/renew-self" && r.status === 200)).toBe(true);
    expect(await vault.unwrapDataKey(MODELS, wrapped)).toHaveLength(32);
  });

  it("AppRole: when renewal fails (token revoked) it logs in again; a 403 from a dead token re-logs in once", async () => {
    const server = await setup();
    await call(server, "POST", "auth/approle/role/pub", {
      token_policies: ["citadel-publisher"],
      token_ttl: `${TTL_S}s`,
    });
    const roleId = (await call(server, "GET", "auth/approle/role/pub/role-id")).data as { role_id: string };
    const secret = (await call(server, "POST", "auth/approle/role/pub/secret-id")).data as { secret_id: string };
    const vault = await provider(server, {
      auth: { method: "approle", roleId: roleId.role_id, secretId: secret.secret_id },
    });

    server.revokeAllTokens();
    // The renewal at ~2/3 of the TTL fails with 403 -> login again.
    await until("a second login", () => vault.tokenStatus().logins >= 2);
    expect(vault.tokenStatus().renewalFailures).toBeGreaterThanOrEqual(1);
    expect(vault.tokenStatus().logins).toBe(2);

    server.revokeAllTokens();
    const { wrapped } = await vault.generateDataKey(MODELS); // 403 -> lookup-self 403 -> login -> retry
    expect(wrapped).toMatch(/^vault:v1:/);
    expect(vault.tokenStatus().logins).toBe(3);
  });

  it("AppRole: a wrong secret_id fails at start with VAULT_DENIED and no secret in the error", async () => {
    const server = await setup();
    await call(server, "POST", "auth/approle/role/citadel-worker", { token_policies: ["citadel-worker"] });
    const roleId = (await call(server, "GET", "auth/approle/role/citadel-worker/role-id")).data as { role_id: string };
    const secretId = "6f1e1f8a-0d5c-4b7e-9c0e-0123456789ab";
    const err = await caught(
      createVaultKeyProvider({ addr: server.addr, auth: { method: "approle", roleId: roleId.role_id, secretId } }),
    );
    expect(err.code).toBe("VAULT_DENIED");
    expect(everything(err)).not.toContain(secretId);
  });

  it("Kubernetes: logs in with the service-account JWT read from a file (custom mount, signed JWT)", async () => {
    const server = await setup();
    const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    await call(server, "POST", "sys/auth/k8s-prod", { type: "kubernetes" });
    await call(server, "POST", "auth/k8s-prod/config", {
      kubernetes_host: "https://kubernetes.default.svc",
      pem_keys: [publicKey.export({ type: "spki", format: "pem" }).toString()],
    });
    await call(server, "POST", "auth/k8s-prod/role/citadel-worker", {
      bound_service_account_names: ["citadel-worker"],
      bound_service_account_namespaces: ["citadel"],
      token_policies: ["citadel-worker"],
      token_ttl: "1h",
    });
    const dir = mkdtempSync(join(tmpdir(), "citadel-k8s-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const jwtPath = join(dir, "token");
    const jwt = makeServiceAccountJwt({ namespace: "citadel", name: "citadel-worker", privateKey });
    writeFileSync(jwtPath, `${jwt}\n`, { mode: 0o600 });

    const vault = await provider(server, {
      auth: { method: "kubernetes", role: "citadel-worker", jwtPath, mount: "k8s-prod" },
    });
    expect(vault.tokenStatus()).toMatchObject({ method: "kubernetes", authenticated: true });
    expect(await vault.publicKeys()).toHaveLength(1);

    // A service account from another namespace is refused, and the JWT never shows up.
    const other = makeServiceAccountJwt({ namespace: "default", name: "citadel-worker", privateKey });
    writeFileSync(jwtPath, other);
    const err = await caught(
      createVaultKeyProvider({
        addr: server.addr,
        auth: { method: "kubernetes", role: "citadel-worker", jwtPath, mount: "k8s-prod" },
      }),
    );
    expect(err.code).toBe("VAULT_DENIED");
    expect(everything(err)).not.toContain(other);
    expect(everything(err)).not.toContain(other.split(".")[1] ?? "-");
  });

  it("a non-renewable static token keeps being used and is never renewed", async () => {
    const server = await setup();
    const token = server.createToken(["citadel-worker"], { ttl: `${TTL_S}s`, renewable: false });
    const created = Date.now();
    const vault = await provider(server, { auth: { method: "token", token } });
    expect(vault.tokenStatus()).toMatchObject({ renewable: false, renewals: 0 });
    // Past the point (2/3 of the TTL) where a renewable one would be renewed, well before it expires.
    await sleep(Math.max(0, created + (TTL_MS * 3) / 4 - Date.now()));
    expect(await vault.publicKeys()).toHaveLength(1);
    expect(server.requests.some((r) => r.path === "auth/token/renew-self")).toBe(false);
    expect(vault.tokenStatus().renewals).toBe(0);
  });

  it("a renewable static token is renewed before it expires", async () => {
    const server = await setup();
    const token = server.createToken(["citadel-worker"], { ttl: `${TTL_S}s` });
    const started = Date.now();
    const vault = await provider(server, { auth: { method: "token", token } });
    await until("a renewal", () => vault.tokenStatus().renewals >= 1);
    // Past the first TTL the token still works.
    await sleep(Math.max(0, started + TTL_MS + 500 - Date.now()));
    expect(await vault.publicKeys()).toHaveLength(1);
  });
});

describe("VaultKeyProvider failures", () => {
  it("connection refused -> VAULT_UNAVAILABLE at once (not after the request timeout)", async () => {
    const server = await setup();
    const vault = await provider(server, { keyCacheTtlMs: 0, requestTimeoutMs: 20_000 });
    const { wrapped } = await vault.generateDataKey(MODELS);
    await server.setDown("refuse");
    const started = Date.now();
    const err = await caught(vault.unwrapDataKey(MODELS, wrapped));
    expect(err.code).toBe("VAULT_UNAVAILABLE");
    expect(Date.now() - started).toBeLessThan(10_000);
    await server.setDown(false);
    expect(await vault.unwrapDataKey(MODELS, wrapped)).toHaveLength(32);
  });

  it("a Vault that accepts and never answers -> VAULT_UNAVAILABLE within the request timeout", async () => {
    const server = await setup();
    const vault = await provider(server, { requestTimeoutMs: 300 });
    await server.setDown("hang");
    const started = Date.now();
    const err = await caught(vault.generateDataKey(MODELS));
    const elapsed = Date.now() - started;
    expect(err.code).toBe("VAULT_UNAVAILABLE");
    // The deadline ended it (not before the 300 ms timeout, and not a socket's own minutes-long one).
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(10_000);
    await server.setDown(false);
  });

  it("sealed -> VAULT_UNAVAILABLE (sealed); cached keys still unwrap; the cache expires", async () => {
    const server = await setup();
    // Long enough that the cached key is surely still cached while sealed, on a loaded machine too.
    const keyCacheTtlMs = 2_000;
    const vault = await provider(server, { keyCacheTtlMs });
    const { wrapped, plaintext } = await vault.generateDataKey(MODELS);
    const other = await vault.generateDataKey(MODELS);
    const seen = await vault.unwrapDataKey(MODELS, wrapped);
    const cached = Date.now(); // the key was cached before unwrapDataKey returned
    seen.fill(0); // the caller wipes its copy; the cache keeps its own

    server.setSealed(true);
    expect((await vault.unwrapDataKey(MODELS, wrapped)).equals(plaintext)).toBe(true);
    const err = await caught(vault.unwrapDataKey(MODELS, other.wrapped));
    expect(err.code).toBe("VAULT_UNAVAILABLE");
    expect(err.details).toMatchObject({ sealed: true, status: 503, operation: "decrypt" });
    expect(everything(err)).not.toContain(other.wrapped.slice(9));

    await sleep(Math.max(0, cached + keyCacheTtlMs + 50 - Date.now()));
    expect((await caught(vault.unwrapDataKey(MODELS, wrapped))).code).toBe("VAULT_UNAVAILABLE");
    server.setSealed(false);
    expect((await vault.health()).sealed).toBe(false);
  });

  it("a ciphertext Vault rejects -> KEY_UNWRAP_FAILED; a malformed one is refused without a call", async () => {
    const server = await setup();
    const token = server.createToken(["citadel-worker"]);
    const vault = await provider(server, { auth: { method: "token", token } });
    const forged = `vault:v1:${Buffer.alloc(48, 1).toString("base64")}`;
    const err = await caught(vault.unwrapDataKey(MODELS, forged));
    expect(err.code).toBe("KEY_UNWRAP_FAILED");
    expect(everything(err)).not.toContain(forged.slice(9));
    expect(everything(err)).not.toContain(token);

    const before = server.requests.length;
    expect((await caught(vault.unwrapDataKey(MODELS, "not-a-ciphertext"))).code).toBe("KEY_UNWRAP_FAILED");
    expect((await caught(vault.unwrapDataKey("../sys/seal", forged))).code).toBe("VALIDATION_FAILED");
    expect(server.requests.length).toBe(before);
  });

  it("close() wipes the cache, is idempotent, and later calls fail", async () => {
    const server = await setup();
    const vault: VaultKeyProvider = await provider(server);
    const { wrapped } = await vault.generateDataKey(MODELS);
    await vault.unwrapDataKey(MODELS, wrapped);
    const first = vault.close();
    expect(vault.close()).toBe(first);
    await first;
    expect(vault.tokenStatus().authenticated).toBe(false);
    expect((await caught(vault.unwrapDataKey(MODELS, wrapped))).code).toBe("INTERNAL");
  });

  it("rejects a bad config before any request", async () => {
    const err = await caught(
      createVaultKeyProvider({ addr: "ftp://vault", auth: { method: "token", token: "hvs.secret-token-value" } }),
    );
    expect(err.code).toBe("VALIDATION_FAILED");
    expect(everything(err)).not.toContain("hvs.secret-token-value");
  });
});
