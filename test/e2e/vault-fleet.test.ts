import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { buildConvNet } from "@citadel/onnx";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Loose } from "../support/fleet.js";
import { b64, startTestFleet, type TestFleet } from "../support/fleet.js";
import { POLICY_DIR } from "../support/vault-server/index.js";
import { startVaultBackend, type VaultBackend } from "../vault/backends.js";

/**
 * The production key path end to end: models sealed with Vault Transit data keys and
 * signed by a Transit ed25519 key using a publisher token; served by a worker whose
 * token may only decrypt; the API and worker verify against pinned public keys.
 */
const run = randomBytes(4).toString("hex");
const MODELS = `citadel-models-${run}`;
const SIGNING = `citadel-signing-${run}`;
let backend: VaultBackend;
let fleet: TestFleet;
let publisherToken = "";
let workerToken = "";

async function vault(method: string, p: string, body?: object, token = backend.rootToken) {
  const res = await fetch(`${backend.addr}/v1/${p}`, {
    method,
    headers: { "X-Vault-Token": token, "content-type": "application/json" },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : {}) as Record<string, Loose> };
}

beforeAll(async () => {
  backend = await startVaultBackend();
  process.stderr.write(`vault-fleet: using ${backend.description}\n`);
  const mount = await vault("POST", "sys/mounts/transit", { type: "transit" });
  expect(mount.status < 300 || JSON.stringify(mount.body).includes("already in use")).toBe(true);
  for (const [name, file] of [
    [`citadel-worker-${run}`, "citadel-worker.hcl"],
    [`citadel-publisher-${run}`, "citadel-publisher.hcl"],
  ] as const) {
    const policy = readFileSync(path.join(POLICY_DIR, file), "utf8")
      .replaceAll("citadel-models", MODELS)
      .replaceAll("citadel-signing", SIGNING);
    expect((await vault("PUT", `sys/policies/acl/${name}`, { policy })).status).toBeLessThan(300);
  }
  expect((await vault("POST", `transit/keys/${MODELS}`, { type: "aes256-gcm96" })).status).toBeLessThan(300);
  expect((await vault("POST", `transit/keys/${SIGNING}`, { type: "ed25519" })).status).toBeLessThan(300);
  const token = async (policy: string) =>
    (await vault("POST", "auth/token/create", { policies: [policy], ttl: "30m", no_default_policy: true })).body.auth
      .client_token as string;
  publisherToken = await token(`citadel-publisher-${run}`);
  workerToken = await token(`citadel-worker-${run}`);
  const vaultEnv = {
    KEY_PROVIDER: "vault",
    VAULT_ADDR: backend.addr,
    VAULT_AUTH: "token",
    VAULT_MODEL_KEY: MODELS,
    VAULT_SIGNING_KEY: SIGNING,
  };
  // Pin the signer's public keys, read with the publisher token, as an operator would (`citadel keys show`).
  const keys = await vault("GET", `transit/keys/${SIGNING}`, undefined, publisherToken);
  const pinned = Object.entries(keys.body.data.keys as Record<string, { public_key: string }>).map(([v, k]) => ({
    keyId: `vault:transit/${SIGNING}:v${v}`,
    publicKey: k.public_key,
  }));
  fleet = await startTestFleet({
    workers: 1,
    env: { ...vaultEnv, VAULT_TOKEN: publisherToken, TRUSTED_SIGNERS: "/dev/null" },
    workerEnv: { VAULT_TOKEN: workerToken },
    beforeStart: (dir) => {
      const file = path.join(dir, "trusted-signers.json");
      writeFileSync(file, JSON.stringify(pinned));
      return { TRUSTED_SIGNERS: file };
    },
  });
});
afterAll(async () => {
  await fleet?.close();
  await backend?.stop();
});

describe(`sealed with Vault Transit, served by a decrypt-only worker [${process.env.VAULT_ADDR ? "external Vault" : "Vault (real if available, else test server)"}]`, () => {
  it("seals under a Transit data key, signs with Transit ed25519, and serves", async () => {
    await fleet.publish(buildConvNet({ seed: 11 }), { name: "vaulted", version: "1", spec: {} });
    const m = (await fleet.ctx.registry.getManifest("vaulted", "1")) as {
      manifest: { artifact: { wrappedKey: string; keyProvider: string } };
      signature: { keyId: string };
    };
    expect(m.manifest.artifact.wrappedKey).toMatch(/^vault:v1:/);
    expect(m.manifest.artifact.keyProvider).toBe("vault");
    expect(m.signature.keyId).toBe(`vault:transit/${SIGNING}:v1`);
    const sub = await fleet.request("POST", "/v1/jobs", {
      model: "vaulted",
      inputs: { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(new Float32Array(3072).fill(0.5)) } },
    });
    expect(sub.status).toBe(202);
    let done = await fleet.request("GET", `/v1/jobs/${sub.json.id}?wait=20000`);
    while (done.json.status === "queued" || done.json.status === "active")
      done = await fleet.request("GET", `/v1/jobs/${sub.json.id}?wait=20000`);
    expect(done.json.status, JSON.stringify(done.json.error)).toBe("completed");
  });

  it("the worker's token is refused a data key and a signature, but may decrypt", async () => {
    const datakey = await vault("POST", `transit/datakey/plaintext/${MODELS}`, {}, workerToken);
    expect(datakey.status).toBe(403);
    const signing = await vault(
      "POST",
      `transit/sign/${SIGNING}`,
      { input: Buffer.from("x").toString("base64") },
      workerToken,
    );
    expect(signing.status).toBe(403);
    const m = (await fleet.ctx.registry.getManifest("vaulted", "1")) as {
      manifest: { artifact: { wrappedKey: string } };
    };
    expect(
      (await vault("POST", `transit/decrypt/${MODELS}`, { ciphertext: m.manifest.artifact.wrappedKey }, workerToken))
        .status,
    ).toBe(200);
  });
});
