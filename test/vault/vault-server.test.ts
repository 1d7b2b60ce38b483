/**
 * The Vault test server holds to Vault's documented shapes: status codes, `{"errors":[…]}`
 * bodies, health query parameters, token TTLs, ACL path matching from the repo's HCL.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import {
  Acl,
  makeServiceAccountJwt,
  POLICY_DIR,
  PolicyParseError,
  parsePolicy,
  startVaultTestServer,
  type VaultTestServer,
  type VaultTestServerOptions,
} from "../support/vault-server/index.js";

const servers: VaultTestServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
});

async function start(options: VaultTestServerOptions = {}): Promise<VaultTestServer> {
  const server = await startVaultTestServer({ policyDir: POLICY_DIR, ...options });
  servers.push(server);
  return server;
}

async function api(server: VaultTestServer, method: string, path: string, body?: object, token?: string) {
  const res = await fetch(`${server.addr}/v1/${path}`, {
    method,
    headers: { "Content-Type": "application/json", ...(token ? { "X-Vault-Token": token } : {}) },
    body: body && method !== "GET" ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

describe("policy parser and ACL", () => {
  it("parses the repo's policy files", () => {
    const worker = parsePolicy(readFileSync(join(POLICY_DIR, "citadel-worker.hcl"), "utf8"));
    expect(worker).toEqual([
      { path: "transit/decrypt/citadel-models", capabilities: ["update"] },
      { path: "transit/keys/citadel-signing", capabilities: ["read"] },
    ]);
    const publisher = parsePolicy(readFileSync(join(POLICY_DIR, "citadel-publisher.hcl"), "utf8"));
    expect(publisher.map((r) => r.path)).toContain("transit/datakey/plaintext/citadel-models");
    expect(publisher.map((r) => r.path)).not.toContain("transit/decrypt/citadel-models");
  });

  it("rejects what it does not understand", () => {
    expect(() => parsePolicy('path "a" { capabilities = ["fly"] }')).toThrow(PolicyParseError);
    expect(() => parsePolicy('path "a" { allowed_parameters = {} }')).toThrow(PolicyParseError);
    expect(() => parsePolicy('path "a" { capabilities = ["read"]')).toThrow(PolicyParseError);
  });

  it("applies Vault's priority: exact over glob, fewer + over more, longer glob over shorter, deny wins", () => {
    const acl = new Acl([
      parsePolicy(`
        path "transit/*" { capabilities = ["read"] }
        path "transit/keys/*" { capabilities = ["list"] }
        path "transit/keys/secret" { capabilities = ["deny"] }
        path "transit/+/x" { capabilities = ["update"] }
        path "transit/+/+" { capabilities = ["create"] }
        // comment
        /* block comment */
        path "/sys/health" { capabilities = ["sudo", "read"] }
      `),
    ]);
    expect(acl.allows("transit/anything", "read")).toBe(true);
    expect(acl.allows("transit/keys/foo", "list")).toBe(true);
    expect(acl.allows("transit/keys/foo", "read")).toBe(false); // transit/keys/* is more specific
    expect(acl.allows("transit/keys/secret", "list")).toBe(false);
    expect(acl.allows("transit/encrypt/x", "update")).toBe(true);
    expect(acl.allows("transit/encrypt/y", "create")).toBe(true);
    expect(acl.allows("transit/encrypt/y", "update")).toBe(false);
    expect(acl.allows("sys/health", "read", true)).toBe(true);
    expect(acl.allows("sys/mounts", "read")).toBe(false);
  });
});

describe("Vault test server", () => {
  it("sys/health: status codes and documented query parameters", async () => {
    const server = await start();
    const health = await fetch(`${server.addr}/v1/sys/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ initialized: true, sealed: false, standby: false });
    expect((await fetch(`${server.addr}/v1/sys/health`, { method: "HEAD" })).status).toBe(200);
    server.setStandby(true);
    expect((await fetch(`${server.addr}/v1/sys/health`)).status).toBe(429);
    expect((await fetch(`${server.addr}/v1/sys/health?standbyok=true`)).status).toBe(200);
    expect((await fetch(`${server.addr}/v1/sys/health?standbycode=200`)).status).toBe(200);
    server.setStandby(false);
    server.setSealed(true);
    expect((await fetch(`${server.addr}/v1/sys/health`)).status).toBe(503);
    expect((await fetch(`${server.addr}/v1/sys/health?sealedcode=299`)).status).toBe(299);
    expect((await fetch(`${server.addr}/v1/sys/health?activecode=abc`)).status).toBe(400);
    const uninit = await start({ initialized: false });
    expect((await fetch(`${uninit.addr}/v1/sys/health`)).status).toBe(501);
    expect((await fetch(`${uninit.addr}/v1/sys/health?uninitcode=200`)).status).toBe(200);
  });

  it("sealed: every API call answers 503 Vault is sealed; unseal needs the key", async () => {
    const server = await start();
    server.setSealed(true);
    const res = await api(server, "POST", "transit/datakey/plaintext/citadel-models", {}, server.rootToken);
    expect(res).toEqual({ status: 503, body: { errors: ["Vault is sealed"] } });
    expect((await api(server, "PUT", "sys/unseal", { key: "wrong" })).status).toBe(400);
    const unsealed = await api(server, "PUT", "sys/unseal", { key: server.unsealKey });
    expect(unsealed.body).toMatchObject({ sealed: false });
    expect((await api(server, "PUT", "sys/seal", {}, server.createToken(["citadel-publisher"]))).status).toBe(403);
  });

  it("tokens: unknown or expired -> 403 permission denied; lookup-self shape; renewal capped at max TTL", async () => {
    const server = await start();
    expect(await api(server, "GET", "auth/token/lookup-self", undefined, "hvs.nope")).toEqual({
      status: 403,
      body: { errors: ["permission denied"] },
    });
    const short = server.createToken(["citadel-worker"], { ttl: "1s" });
    const lookup = await api(server, "GET", "auth/token/lookup-self", undefined, short);
    expect(lookup.body.data).toMatchObject({ id: short, policies: ["citadel-worker", "default"], renewable: true });
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    expect((await api(server, "GET", "auth/token/lookup-self", undefined, short)).status).toBe(403);

    const capped = server.createToken(["citadel-worker"], { ttl: "10s", maxTtl: "20s" });
    const renewed = await api(server, "POST", "auth/token/renew-self", { increment: "1h" }, capped);
    expect((renewed.body.auth as { lease_duration: number }).lease_duration).toBeLessThanOrEqual(20);
    expect(renewed.body.warnings).toHaveLength(1);
    const fixed = server.createToken(["citadel-worker"], { renewable: false });
    expect((await api(server, "POST", "auth/token/renew-self", {}, fixed)).status).toBe(400);
  });

  it("token create: needs a capability on auth/token/create; policies must be a subset unless root", async () => {
    const server = await start();
    const worker = server.createToken(["citadel-worker"]);
    expect((await api(server, "POST", "auth/token/create", { policies: ["citadel-publisher"] }, worker)).status).toBe(
      403,
    );
    server.writePolicy("minter", 'path "auth/token/create" { capabilities = ["update"] }');
    const minter = server.createToken(["minter", "citadel-worker"]);
    expect((await api(server, "POST", "auth/token/create", { policies: ["citadel-publisher"] }, minter)).status).toBe(
      400,
    );
    const child = await api(server, "POST", "auth/token/create", { policies: ["citadel-worker"], ttl: "1h" }, minter);
    expect(child.body.auth).toMatchObject({ policies: ["citadel-worker", "default"], lease_duration: 3600 });
  });

  it("transit: Vault's errors for missing keys, bad ciphertexts, wrong key types, old versions", async () => {
    const server = await start();
    const root = server.rootToken;
    await api(server, "POST", "transit/keys/m", { type: "aes256-gcm96" }, root);
    await api(server, "POST", "transit/keys/s", { type: "ed25519" }, root);
    expect((await api(server, "POST", "transit/datakey/plaintext/nope", {}, root)).body).toEqual({
      errors: ["encryption key not found"],
    });
    expect((await api(server, "POST", "transit/keys/x", { type: "rot13" }, root)).status).toBe(400);
    expect((await api(server, "POST", "transit/sign/m", { input: "AAAA" }, root)).status).toBe(400);
    expect((await api(server, "POST", "transit/decrypt/m", { ciphertext: "nope" }, root)).body).toEqual({
      errors: ["invalid ciphertext: no prefix"],
    });
    const enc = await api(server, "POST", "transit/encrypt/m", { plaintext: "aGVsbG8=" }, root);
    const ct = (enc.body.data as { ciphertext: string }).ciphertext;
    expect(ct).toMatch(/^vault:v1:/);
    const raw = Buffer.from(ct.slice(9), "base64");
    expect(raw.length).toBe(12 + 5 + 16); // nonce || ciphertext || tag
    raw[14] = (raw[14] ?? 0) ^ 1;
    const tampered = await api(
      server,
      "POST",
      "transit/decrypt/m",
      { ciphertext: `vault:v1:${raw.toString("base64")}` },
      root,
    );
    expect(tampered.status).toBe(400);
    await api(server, "POST", "transit/keys/m/rotate", {}, root);
    await api(server, "POST", "transit/keys/m/config", { min_decryption_version: 2 }, root);
    expect((await api(server, "POST", "transit/decrypt/m", { ciphertext: ct }, root)).status).toBe(400);
    expect((await api(server, "GET", "transit/keys/nope", undefined, root)).body).toEqual({ errors: [] });
    expect((await api(server, "GET", "nowhere/at/all", undefined, root)).status).toBe(404);
  });

  it("ACL from the repo's HCL: the worker may decrypt and read the signing key only", async () => {
    const server = await start();
    const root = server.rootToken;
    await api(server, "POST", "transit/keys/citadel-models", {}, root);
    await api(server, "POST", "transit/keys/citadel-signing", { type: "ed25519" }, root);
    const worker = server.createToken(["citadel-worker"]);
    const denied = [
      ["POST", "transit/datakey/plaintext/citadel-models"],
      ["POST", "transit/datakey/wrapped/citadel-models"],
      ["POST", "transit/encrypt/citadel-models"],
      ["POST", "transit/sign/citadel-signing"],
      ["POST", "transit/keys/citadel-models/rotate"],
      ["GET", "transit/keys/citadel-models"],
      ["POST", "transit/decrypt/other-key"],
    ] as const;
    for (const [method, path] of denied) {
      expect((await api(server, method, path, { plaintext: "AAAA", input: "AAAA" }, worker)).status).toBe(403);
    }
    expect((await api(server, "GET", "transit/keys/citadel-signing", undefined, worker)).status).toBe(200);
    // The worker may call decrypt (a garbage ciphertext reaches the engine: 400, not 403).
    expect((await api(server, "POST", "transit/decrypt/citadel-models", { ciphertext: "x" }, worker)).status).toBe(400);
  });

  it("kubernetes login: unsigned claims accepted without pem_keys; wrong service account refused", async () => {
    const server = await start();
    await api(
      server,
      "POST",
      "auth/kubernetes/role/citadel-worker",
      {
        bound_service_account_names: "citadel-worker",
        bound_service_account_namespaces: "citadel",
        token_policies: ["citadel-worker"],
      },
      server.rootToken,
    );
    const good = makeServiceAccountJwt({ namespace: "citadel", name: "citadel-worker" });
    const login = await api(server, "POST", "auth/kubernetes/login", { role: "citadel-worker", jwt: good });
    expect(login.body.auth).toMatchObject({
      policies: ["citadel-worker", "default"],
      metadata: { service_account_name: "citadel-worker", service_account_namespace: "citadel" },
    });
    const bad = makeServiceAccountJwt({ namespace: "citadel", name: "default" });
    expect((await api(server, "POST", "auth/kubernetes/login", { role: "citadel-worker", jwt: bad })).status).toBe(403);
  });

  it("setDown: refuse closes the port, hang never answers, false restores service", async () => {
    const server = await start();
    await server.setDown("refuse");
    await expect(fetch(`${server.addr}/v1/sys/health`)).rejects.toThrow();
    await server.setDown(false);
    expect((await fetch(`${server.addr}/v1/sys/health`)).status).toBe(200);
    await server.setDown("hang");
    await expect(fetch(`${server.addr}/v1/sys/health`, { signal: AbortSignal.timeout(200) })).rejects.toThrow();
    await server.setDown(false);
    expect((await fetch(`${server.addr}/v1/sys/health`)).status).toBe(200);
  });
});

describe("Vault test server's Ed25519 keys", () => {
  // Node 20 deadlocks when a scavenge lands inside a JWK export of a key that
  // generateKeyPairSync has just made (the export holds the key's mutex while it
  // allocates; the collected key-generation job's destructor takes the same mutex). It
  // hung a CI run in this server's making of keys. A young generation of 1 MB makes a
  // scavenge land there within tens of thousands of keys; gone in Node 24.
  it("creates 40,000 ed25519 keys under constant young collections without hanging", async () => {
    const entry = new URL("../support/vault-server/transit.ts", import.meta.url).href;
    const program = `
      const { TransitEngine } = await import(${JSON.stringify(entry)});
      const t = new TransitEngine();
      for (let i = 0; i < 40000; i++) t.handle("POST", "keys/k" + i, { type: "ed25519" }, false);
      process.stdout.write(String(t.handle("LIST", "keys/", {}, true).body.data.keys.length));`;
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["--max-semi-space-size=1", "--import", import.meta.resolve("tsx"), "--input-type=module", "-e", program],
      { timeout: 90_000 },
    );
    expect(stdout).toBe("40000");
  }, 120_000);
});
