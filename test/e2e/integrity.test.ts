import { readFileSync, writeFileSync } from "node:fs";
import { readAuditEntries } from "@citadel/audit";
import { buildConvNet } from "@citadel/onnx";
import { JobQueues } from "@citadel/queue";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { convBinaryJob, convInput, enqueueDirect, postBinary } from "../support/api-kit.js";
import type { Loose } from "../support/fleet.js";
import { redisUrl, type TestFleet } from "../support/fleet.js";
import { startVaultTestFleet, unwrapCalls } from "../support/vault-fleet.js";
import type { VaultTestServer } from "../support/vault-server/index.js";

let fleet: TestFleet;
let vault: VaultTestServer;
let closeFleet: () => Promise<void> = async () => undefined;
let queues: JobQueues;
let version = 0;
const x = convInput;

/**
 * On the production key path (Vault Transit, the test server): "before any plaintext"
 * is checked from outside the worker, as the data-key unwraps Vault was asked for.
 */
beforeAll(async () => {
  const started = await startVaultTestFleet({ workers: 1 });
  ({ fleet, vault } = started);
  closeFleet = started.close;
  await fleet.publish(buildConvNet({ seed: 1 }), { name: "good", version: "1", spec: {} });
  await fleet.publish(buildConvNet({ seed: 2 }), { name: "other", version: "1", spec: {} });
  queues = new JobQueues(
    new Redis(redisUrl(), { maxRetriesPerRequest: null }),
    () => new Redis(redisUrl(), { maxRetriesPerRequest: null }),
    fleet.redis,
    {
      prefix: fleet.prefix,
      resultTtlMs: 60_000,
      failedTtlMs: 60_000,
      attempts: 3,
      backoffMs: 10,
    },
  );
});
afterAll(async () => {
  await queues?.close();
  await closeFleet();
});

/** Publishes a fresh version of `target` and returns its name@version. */
async function freshTarget(): Promise<{ name: string; version: string }> {
  version++;
  const v = String(version);
  await fleet.publish(buildConvNet({ seed: 3 }), { name: "target", version: v, spec: {} }, { stable: true });
  return { name: "target", version: v };
}

async function finalView(id: string) {
  for (;;) {
    const r = await fleet.request("GET", `/v1/jobs/${id}?wait=10000`);
    if (r.json.status !== "queued" && r.json.status !== "active") {
      return r.json;
    }
  }
}

async function rawManifest(name: string, v: string): Promise<Record<string, Loose>> {
  return (await fleet.ctx.registry.getManifest(name, v)) as Record<string, Loose>;
}

async function stillServing() {
  const sub = await fleet.request("POST", "/v1/jobs", { model: "good", inputs: x() });
  expect(sub.status).toBe(202);
  expect((await finalView(sub.json.id)).status).toBe("completed");
}

/** Whether the worker built a session for this version (counted only once a runner holds it). */
async function sessionCreated(t: { name: string; version: string }): Promise<boolean> {
  const text = await (await fetch(`${fleet.workers[0]?.metricsUrl}/metrics`)).text();
  const mine = `model="${t.name}"[^}]*version="${t.version}"|version="${t.version}"[^}]*model="${t.name}"`;
  return (
    new RegExp(`^citadel_model_loads_total\\{[^}]*(${mine})[^}]*outcome="loaded"`, "m").test(text) ||
    new RegExp(`^citadel_model_loads_total\\{[^}]*outcome="loaded"[^}]*(${mine})`, "m").test(text) ||
    new RegExp(`^citadel_execution_provider_info\\{[^}]*(${mine})`, "m").test(text)
  );
}

async function auditHas(model: string, v: string, code: string) {
  const entries = await readAuditEntries(fleet.redis, fleet.prefix);
  return entries
    .map((e) => e.rec as { event?: string; model?: string; version?: string; errorCode?: string })
    .some((e) => e.event === "model.rejected" && e.model === model && e.version === v && e.errorCode === code);
}

const flipBase64 = (s: string, at: number) => {
  const b = Buffer.from(s, "base64");
  b[at % b.length] = (b[at % b.length] ?? 0) ^ 1;
  return b.toString("base64");
};

const manifestCases: [
  string,
  (m: Record<string, Loose>, t: { name: string; version: string }) => Promise<unknown> | unknown,
  string,
][] = [
  [
    "a flipped bit in the artifact IV",
    (m) => {
      m.manifest.artifact.iv = flipBase64(m.manifest.artifact.iv, 3);
    },
    "SIGNATURE_INVALID",
  ],
  [
    "a flipped bit in the wrapped key",
    (m) => {
      const w: string = m.manifest.artifact.wrappedKey;
      const [a, b, c] = w.split(":");
      m.manifest.artifact.wrappedKey = `${a}:${b}:${flipBase64(c ?? "", 20)}`;
    },
    "SIGNATURE_INVALID",
  ],
  [
    "a changed input range",
    (m) => {
      m.manifest.inputs[0].range = [-1e9, 1e9];
    },
    "SIGNATURE_INVALID",
  ],
  [
    "a changed max batch",
    (m) => {
      m.manifest.maxBatch = 4096;
    },
    "SIGNATURE_INVALID",
  ],
  [
    "a flipped bit in the signature",
    (m) => {
      m.signature.value = flipBase64(m.signature.value, 7);
    },
    "SIGNATURE_INVALID",
  ],
  [
    "no signature",
    (m) => {
      delete m.signature;
    },
    "SIGNATURE_MISSING",
  ],
  [
    "an untrusted signer",
    (m) => {
      m.signature.keyId = "local:0000000000000000";
    },
    "SIGNER_UNTRUSTED",
  ],
  [
    "another model's (validly signed) manifest",
    async (m) => {
      const other = await rawManifest("other", "1");
      m.manifest = other.manifest;
      m.signature = other.signature;
    },
    "MANIFEST_MODEL_MISMATCH",
  ],
];

const artifactCases: [string, (file: string, t: { name: string; version: string }) => void, string][] = [
  [
    "a flipped bit in the ciphertext",
    (f) => {
      const b = readFileSync(f);
      b[10] = (b[10] ?? 0) ^ 1;
      writeFileSync(f, b);
    },
    "ARTIFACT_HASH_MISMATCH",
  ],
  [
    "a flipped bit in the GCM tag",
    (f) => {
      const b = readFileSync(f);
      b[b.length - 1] = (b[b.length - 1] ?? 0) ^ 1;
      writeFileSync(f, b);
    },
    "ARTIFACT_HASH_MISMATCH",
  ],
  [
    "a truncated artifact",
    (f) => {
      const b = readFileSync(f);
      writeFileSync(f, b.subarray(0, b.length - 100));
    },
    "ARTIFACT_TRUNCATED",
  ],
  [
    "another model's artifact",
    (f) => {
      writeFileSync(f, readFileSync(fleet.ctx.store.pathOf("other", "1")));
    },
    "ARTIFACT_HASH_MISMATCH",
  ],
];

describe("the evidence the checks below rely on", () => {
  it("a sound version costs one data-key unwrap and creates a session when the worker loads it", async () => {
    const t = await freshTarget();
    const before = unwrapCalls(vault);
    const sub = await fleet.request("POST", "/v1/jobs", { model: t.name, version: t.version, inputs: x() });
    expect(sub.status).toBe(202);
    expect((await finalView(sub.json.id)).status).toBe("completed");
    expect(unwrapCalls(vault)).toBe(before + 1);
    expect(await sessionCreated(t)).toBe(true);
  });
});

describe("a tampered manifest is refused by the API and by the worker, before any plaintext", () => {
  it.each(manifestCases)("%s", async (_label, tamper, code) => {
    const t = await freshTarget();
    const m = await rawManifest(t.name, t.version);
    await tamper(m, t);
    await fleet.ctx.registry.putRaw(t.name, t.version, JSON.stringify(m));
    const unwrapsBefore = unwrapCalls(vault);
    // The API checks signatures too: it will not validate against a manifest it cannot trust.
    let api: { status: number; json: Loose } = { status: 0, json: null };
    // Until the API has seen the rewritten manifest (bounded in time, not in tries).
    for (const end = Date.now() + 30_000; api.status !== 503 && Date.now() < end; ) {
      api = await fleet.request("POST", "/v1/jobs", { model: t.name, version: t.version, inputs: x() });
      if (api.status !== 503) await new Promise((r) => setTimeout(r, 20));
    }
    expect([api.status, api.json.error.code]).toEqual([503, code]);
    // A binary submit is refused the same way.
    const bin = convBinaryJob(t.name, t.version);
    const binary = await postBinary(fleet, "/v1/jobs", bin.header, [bin.bytes]);
    expect([binary.status, binary.json.error.code]).toEqual([503, code]);
    // A job that reaches the queue anyway (Redis is a trust boundary) fails with the same code.
    const view = await finalView(await enqueueDirect(queues, t.name, t.version, "integrity-test"));
    expect([view.status, view.error.code]).toEqual(["failed", code]);
    expect(await auditHas(t.name, t.version, code)).toBe(true);
    // Before any plaintext: Vault was never asked for the data key, no session exists.
    expect(unwrapCalls(vault)).toBe(unwrapsBefore);
    expect(await sessionCreated(t)).toBe(false);
    await stillServing();
  });
});

describe("a tampered artifact is refused by the worker before decryption", () => {
  it.each(artifactCases)("%s", async (_label, tamper, code) => {
    const t = await freshTarget();
    tamper(fleet.ctx.store.pathOf(t.name, t.version), t);
    const unwrapsBefore = unwrapCalls(vault);
    const sub = await fleet.request("POST", "/v1/jobs", { model: t.name, version: t.version, inputs: x() });
    expect(sub.status).toBe(202);
    // The same job sent as a binary body meets the same refusal.
    const bin = convBinaryJob(t.name, t.version);
    const binSub = await postBinary(fleet, "/v1/jobs", bin.header, [bin.bytes]);
    expect(binSub.status, JSON.stringify(binSub.json)).toBe(202);
    for (const id of [sub.json.id, binSub.json.id]) {
      const view = await finalView(id);
      expect([view.status, view.error.code], JSON.stringify(view)).toEqual(["failed", code]);
    }
    expect(await auditHas(t.name, t.version, code)).toBe(true);
    // Before decryption: the data key was never unwrapped, no session exists.
    expect(unwrapCalls(vault)).toBe(unwrapsBefore);
    expect(await sessionCreated(t)).toBe(false);
    await stillServing();
  });
});
