import type { AuditEvent, AuditFields, AuditRecord } from "@citadel/audit";
import { buildConvNet } from "@citadel/onnx";
import { type LoadBound, type LoadedModel, ModelHost, workerMetrics } from "@citadel/serving";
import { createLogger, createRegistry } from "@citadel/telemetry";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { metricValue, pollUntil, readAudit } from "../support/api-kit.js";
import { b64, decodeF32, type Loose, startTestFleet, type TestFleet } from "../support/fleet.js";

// A worker bounded to two loaded models serves four: it evicts the least recently used
// idle session for each model it needs, and every job still completes with the output
// a direct onnxruntime run gives.

const BOUND = 2;
const MODELS = ["lru-a", "lru-b", "lru-c", "lru-d"] as const;
const SAMPLE = 3 * 32 * 32;

let fleet: TestFleet;
const direct = new Map<string, ort.InferenceSession>();

beforeAll(async () => {
  fleet = await startTestFleet({ workers: 1, workerEnv: { WORKER_MAX_LOADED_MODELS: String(BOUND) } });
  for (const [i, name] of MODELS.entries()) {
    const bytes = buildConvNet({ seed: i + 1 });
    direct.set(name, await ort.InferenceSession.create(bytes));
    await fleet.publish(bytes, { name, version: "1", spec: { maxBatch: 4, maxQueueDelayMs: 5 } });
  }
});
afterAll(async () => {
  for (const s of direct.values()) await s.release();
  await fleet?.close();
});

/** A deterministic, job-specific sample: each job's output differs from the others'. */
function sample(k: number): Float32Array {
  const x = new Float32Array(SAMPLE);
  for (let i = 0; i < SAMPLE; i++) x[i] = Math.sin(k * 7.1 + i * 0.37) * 0.5;
  return x;
}

async function submit(model: string, k: number): Promise<string> {
  const r = await fleet.request("POST", "/v1/jobs", {
    model,
    inputs: { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(sample(k)) } },
  });
  expect(r.status, JSON.stringify(r.json)).toBe(202);
  return r.json.id as string;
}

async function finished(id: string): Promise<Loose> {
  return pollUntil(
    `job ${id} to finish`,
    async () => {
      const r = await fleet.request("GET", `/v1/jobs/${id}?wait=5000`);
      return r.json.status !== "queued" && r.json.status !== "active" ? r.json : undefined;
    },
    90_000,
  );
}

/** The job completed, and its probs equal a direct run of the same model on the same sample. */
async function expectDirect(view: Loose, model: string, k: number): Promise<void> {
  expect([view.status, view.error?.code], JSON.stringify(view.error)).toEqual(["completed", undefined]);
  const session = direct.get(model) as ort.InferenceSession;
  const out = await session.run({ x: new ort.Tensor("float32", sample(k), [1, 3, 32, 32]) });
  const want = out.probs?.data as Float32Array;
  const have = decodeF32(view.result.outputs.probs.data);
  expect(have.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) expect(Math.abs((have[i] as number) - (want[i] as number))).toBeLessThan(1e-5);
}

/** The worker's model events in its own order (seq), for replaying what it held. */
async function workerModelEvents(): Promise<AuditRecord[]> {
  const workerId = fleet.workers[0]?.workerId;
  return (await readAudit(fleet))
    .filter((r) => r.workerId === workerId && (r.event === "model.loaded" || r.event === "model.unloaded"))
    .sort((a, b) => a.seq - b.seq);
}

/** The most models the worker held at once, replaying its loaded/unloaded records. */
function mostHeld(events: readonly ({ event: AuditEvent } & AuditFields)[]): number {
  const held = new Set<string>();
  let most = 0;
  for (const r of events) {
    const key = `${r.model}@${r.version}`;
    if (r.event === "model.loaded") held.add(key);
    else held.delete(key);
    most = Math.max(most, held.size);
  }
  return most;
}

async function metrics(): Promise<string> {
  return (await fetch(`${fleet.workers[0]?.metricsUrl}/metrics`)).text();
}

describe("a worker bounded to fewer models than it serves", () => {
  it("round robin, one job at a time: each model past the bound evicts the least recently used one", async () => {
    let k = 0;
    for (let round = 0; round < 2; round++) {
      for (const model of MODELS) {
        const id = await submit(model, ++k);
        await expectDirect(await finished(id), model, k);
      }
    }
    const events = await pollUntil("eight model loads in the audit stream", async () => {
      const ev = await workerModelEvents();
      return ev.filter((r) => r.event === "model.loaded").length >= 8 ? ev : undefined;
    });
    expect(mostHeld(events)).toBeLessThanOrEqual(BOUND);
    // a, b load; c evicts a, d evicts b, a evicts c, b evicts d, c evicts a, d evicts b.
    const evicted = events.filter((r) => r.event === "model.unloaded").map((r) => [r.model, r.outcome]);
    expect(evicted).toEqual(["lru-a", "lru-b", "lru-c", "lru-d", "lru-a", "lru-b"].map((m) => [m, "evicted"]));
    const text = await metrics();
    expect(metricValue(text, "citadel_model_evictions_total", { model: "lru-a", version: "1" })).toBe(2);
    expect(metricValue(text, "citadel_model_evictions_total", { model: "lru-c", version: "1" })).toBe(1);
    expect(metricValue(text, "citadel_models_loaded", {})).toBe(BOUND);
    expect(metricValue(text, "citadel_models_loaded_bytes", {})).toBeGreaterThan(0);
  });

  it("jobs interleaved across all four models at once: every one completes, never more than the bound loaded", async () => {
    const before = (await workerModelEvents()).length;
    const jobs: { model: string; k: number; id: string }[] = [];
    for (let k = 100; k < 132; k++) {
      const model = MODELS[k % MODELS.length] as string;
      jobs.push({ model, k, id: await submit(model, k) });
    }
    for (const j of jobs) await expectDirect(await finished(j.id), j.model, j.k);
    // Four models served through two places: some had to be evicted and loaded again
    // (the audit writer may lag the results a little).
    const events = await pollUntil("an eviction in the audit stream", async () => {
      const ev = await workerModelEvents();
      return ev.slice(before).some((r) => r.event === "model.unloaded" && r.outcome === "evicted") ? ev : undefined;
    });
    expect(mostHeld(events)).toBeLessThanOrEqual(BOUND);
    const text = await metrics();
    expect(metricValue(text, "citadel_models_loaded", {})).toBeLessThanOrEqual(BOUND);
  });
});

describe("ModelHost under its bound (the policy, without queues)", () => {
  const HOST_MODELS = ["host-a", "host-b", "host-c"] as const;
  let bytes = 0;

  beforeAll(async () => {
    for (const [i, name] of HOST_MODELS.entries()) {
      const model = buildConvNet({ seed: 10 + i });
      bytes = model.byteLength;
      await fleet.publish(model, { name, version: "1", spec: {} });
    }
  });

  async function host(bound: LoadBound) {
    const records: ({ event: AuditEvent } & AuditFields)[] = [];
    const registry = createRegistry("host-test");
    const metrics = workerMetrics(registry);
    const trusted = await fleet.ctx.trusted();
    const h = new ModelHost({
      registry: fleet.ctx.registry,
      store: fleet.ctx.store,
      keys: await fleet.ctx.keys(),
      trusted: () => trusted,
      audit: { record: (event, fields) => records.push({ event, ...fields }) },
      metrics,
      log: createLogger({ name: "host-test", level: "silent" }),
      workerId: "host-test",
      providers: ["cpu"],
      requireGpu: false,
      deviceId: 0,
      threads: 1,
      rejectionTtlMs: 1000,
      bound,
    });
    const evictions = () => records.filter((r) => r.event === "model.unloaded" && r.outcome === "evicted");
    return { h, records, registry, evictions };
  }

  it("a load waits while every held model is busy (never over the bound), then evicts the first one released", async () => {
    const { h, registry, evictions } = await host({ maxModels: 2 });
    try {
      const a = await h.get("host-a", "1");
      const b = await h.get("host-b", "1");
      const releaseA = h.pin("host-a", "1");
      const releaseB = h.pin("host-b", "1");
      let c: LoadedModel | undefined;
      const loadingC = h.get("host-c", "1").then((m) => {
        c = m;
        return m;
      });
      await pollUntil("host-c's load to wait for room", async () => (h.waitingLoads === 1 ? true : undefined));
      expect([c, a.runner.alive, b.runner.alive, evictions()]).toEqual([undefined, true, true, []]);
      expect(await registry.getSingleMetricAsString("citadel_model_loads_waiting")).toMatch(/ 1$/);
      // host-a is the least recently used but still busy: host-b, released first, goes.
      releaseB();
      const loaded = await loadingC;
      expect(loaded.runner.alive).toBe(true);
      expect([a.runner.alive, b.runner.alive]).toEqual([true, false]);
      expect(evictions().map((r) => r.model)).toEqual(["host-b"]);
      expect(await registry.getSingleMetricAsString("citadel_models_loaded")).toMatch(/ 2$/);
      expect(await registry.getSingleMetricAsString("citadel_model_evictions_total")).toMatch(
        /citadel_model_evictions_total\{[^}]*model="host-b"[^}]*\} 1$/m,
      );
      releaseA();
      // A model asked for again is loaded again, evicting the least recently used idle one (host-a).
      const b2 = await h.get("host-b", "1");
      expect([b2.runner.alive, a.runner.alive, loaded.runner.alive]).toEqual([true, false, true]);
      expect(evictions().map((r) => r.model)).toEqual(["host-b", "host-a"]);
    } finally {
      await h.close();
    }
  });

  it("loads asked for together never hold more than the bound: a model still loading is not evicted", async () => {
    const { h, records, evictions } = await host({ maxModels: 1 });
    try {
      const all = await Promise.allSettled(HOST_MODELS.map((m) => h.get(m, "1")));
      expect(all.map((r) => r.status)).toEqual(["fulfilled", "fulfilled", "fulfilled"]);
      // Each was loaded, then evicted for the next (in the order their manifests verified).
      expect(records.filter((r) => r.event === "model.loaded")).toHaveLength(3);
      expect(evictions()).toHaveLength(2);
      expect(mostHeld(records)).toBe(1);
      expect(h.waitingLoads).toBe(0);
    } finally {
      await h.close();
    }
  });

  it("a byte budget that holds one model: each load evicts the other, and the bytes gauge shows one model", async () => {
    const { h, registry, evictions } = await host({ maxModels: 8, maxBytes: bytes + 1 });
    try {
      const a = await h.get("host-a", "1");
      const b = await h.get("host-b", "1");
      expect([a.runner.alive, b.runner.alive]).toEqual([false, true]);
      expect(evictions().map((r) => r.model)).toEqual(["host-a"]);
      expect(await registry.getSingleMetricAsString("citadel_models_loaded_bytes")).toMatch(new RegExp(` ${bytes}$`));
      expect(await registry.getSingleMetricAsString("citadel_models_loaded")).toMatch(/ 1$/);
    } finally {
      await h.close();
    }
  });
});
