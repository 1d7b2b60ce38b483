import { randomBytes } from "node:crypto";
import { auditStreamKey, readAuditEntries, verifyAuditStream } from "@citadel/audit";
import type { JobData } from "@citadel/contracts";
import {
  buildBatchAxisLastModel,
  buildFailingModel,
  buildIdentityModel,
  buildMultiInputModel,
  buildNoBatchModel,
  buildScalarInputModel,
  buildSlowModel,
} from "@citadel/onnx";
import { JOB_NAME, JobQueues, parseFailure, queueName, queuePrefix } from "@citadel/queue";
import { type Job, Queue } from "bullmq";
import { Redis } from "ioredis";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { storedInputs } from "../support/api-kit.js";
import { b64, decodeF32, queuedBeforeWorker, redisUrl, startTestFleet, type TestFleet } from "../support/fleet.js";

let fleet: TestFleet;

const SLOW_ITERATIONS = 8000; // ≈3 s per run with one thread on this machine (packages/onnx/src/slow.ts)

beforeAll(async () => {
  fleet = await startTestFleet({ workers: 1, workerEnv: { CIRCUIT_FAILURES: "2", CIRCUIT_COOLDOWN_MS: "1500" } });
  // A long max delay: batching tests fill a batch exactly (it closes when full, not on a timer).
  await fleet.publish(buildMultiInputModel(), {
    name: "multi",
    version: "1",
    spec: { maxBatch: 8, maxQueueDelayMs: 1000 },
  });
  // Two samples fill a batch: a run of two closes when full, whatever the arrival timing.
  await fleet.publish(buildScalarInputModel(), {
    name: "scalar",
    version: "1",
    spec: { maxBatch: 2, maxQueueDelayMs: 1000 },
  });
  // runBatch 2 below maxBatch 8: a batch of 7 samples takes four runs, each fed the unbatched scale.
  await fleet.publish(buildScalarInputModel(), {
    name: "scalarcut",
    version: "1",
    spec: { maxBatch: 8, runBatch: 2, maxQueueDelayMs: 1000 },
  });
  await fleet.publish(buildBatchAxisLastModel(), {
    name: "batchlast",
    version: "1",
    spec: { maxBatch: 8, maxQueueDelayMs: 1000, batchAxis: 1 },
  });
  await fleet.publish(buildNoBatchModel(), { name: "nobatch", version: "1", spec: { maxQueueDelayMs: 20 } });
  await fleet.publish(buildSlowModel({ iterations: SLOW_ITERATIONS }), {
    name: "slow",
    version: "1",
    spec: { maxBatch: 4, timeoutMs: 600 },
  });
  await fleet.publish(buildSlowModel({ iterations: SLOW_ITERATIONS }), {
    name: "slowcancel",
    version: "1",
    spec: { maxBatch: 4, timeoutMs: 60_000 },
  });
  await fleet.publish(buildFailingModel(), { name: "failing", version: "1", spec: { maxBatch: 4 } });
});
afterAll(async () => {
  await fleet?.close();
});

type Inputs = Record<string, { dtype: string; shape: number[]; data: string | number[] }>;

async function submit(model: string, inputs: Inputs, extra: Record<string, unknown> = {}) {
  const r = await fleet.request("POST", "/v1/jobs", { model, inputs, ...extra });
  expect(r.status, JSON.stringify(r.json)).toBe(202);
  return r.json.id as string;
}
async function waitFor(id: string) {
  for (;;) {
    const r = await fleet.request("GET", `/v1/jobs/${id}?wait=10000`);
    if (r.json.status !== "queued" && r.json.status !== "active") return r.json;
  }
}
async function metric(name: string): Promise<string> {
  const text = await (await fetch(`${fleet.workers[0]?.metricsUrl}/metrics`)).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith(name))
    .join("\n");
}

/** A counter's value for one model, summed over its other labels (0 before its first sample). */
async function counterFor(name: string, model: string): Promise<number> {
  let sum = 0;
  for (const line of (await metric(name)).split("\n")) {
    const m = new RegExp(`^${name}\\{[^}]*model="${model}"[^}]*\\} ([0-9.e+]+)$`).exec(line);
    if (m) sum += Number(m[1]);
  }
  return sum;
}

/** A histogram's sum and count for one model, summed over its other labels. */
async function histogramFor(name: string, model: string): Promise<{ sum: number; count: number }> {
  const text = await metric(name);
  const value = (suffix: string) => {
    let total = 0;
    for (const line of text.split("\n")) {
      const m = new RegExp(`^${name}_${suffix}\\{[^}]*model="${model}"[^}]*\\} ([-0-9.e+]+)$`).exec(line);
      if (m) total += Number(m[1]);
    }
    return total;
  };
  return { sum: value("sum"), count: value("count") };
}

/** Samples inferred and runs made for `model` so far, from the worker's own counters. */
async function runCounts(model: string): Promise<{ samples: number; runs: number }> {
  return {
    samples: await counterFor("citadel_inference_count_total", model),
    runs: await counterFor("citadel_inference_exec_count_total", model),
  };
}

/** Runs each job's inputs through onnxruntime directly and compares with the fleet's output. */
async function expectSameAsDirect(
  model: Uint8Array,
  jobs: { feeds: Record<string, ort.Tensor>; view: { result: { outputs: Inputs } } }[],
) {
  const session = await ort.InferenceSession.create(model);
  for (const j of jobs) {
    const direct = await session.run(j.feeds);
    const got = j.view.result.outputs.y;
    expect(got?.shape).toEqual([...(direct.y?.dims ?? [])]);
    expect(Array.from(decodeF32(String(got?.data ?? "")))).toEqual(Array.from(direct.y?.data as Float32Array));
  }
  await session.release();
}

describe("micro-batching equals unbatched onnxruntime", () => {
  it("batches two inputs of different dtypes along the first axis", async () => {
    const jobs = [1, 2, 3, 2].map((n, i) => {
      const a = Float32Array.from({ length: n * 4 }, (_, k) => k + i * 10);
      const b = BigInt64Array.from({ length: n }, (_, k) => BigInt(k * 100 + i));
      return { n, a, b };
    });
    const ids = await queuedBeforeWorker(fleet, () =>
      Promise.all(
        jobs.map((j) =>
          submit("multi", {
            a: { dtype: "float32", shape: [j.n, 4], data: b64(j.a) },
            b: { dtype: "int64", shape: [j.n, 1], data: b64(j.b) },
          }),
        ),
      ),
    );
    const views = await Promise.all(ids.map(waitFor));
    // 8 samples in 4 jobs, all waiting when the worker started: one full run (maxBatch 8).
    // The worker started with them all queued; its run counters start at zero.
    expect(await runCounts("multi")).toEqual({ samples: 8, runs: 1 });
    expect(views.map((v) => v.result.batchSize)).toEqual(jobs.map((j) => j.n));
    await expectSameAsDirect(
      buildMultiInputModel(),
      jobs.map((j, i) => ({
        feeds: { a: new ort.Tensor("float32", j.a, [j.n, 4]), b: new ort.Tensor("int64", j.b, [j.n, 1]) },
        view: views[i],
      })),
    );
  });

  it("batches along a batch axis that is not the first", async () => {
    const jobs = [2, 1, 3, 2].map((n, i) => ({ n, x: Float32Array.from({ length: 4 * n }, (_, k) => k * 0.5 - i) }));
    const ids = await queuedBeforeWorker(fleet, () =>
      Promise.all(jobs.map((j) => submit("batchlast", { x: { dtype: "float32", shape: [4, j.n], data: b64(j.x) } }))),
    );
    const views = await Promise.all(ids.map(waitFor));
    expect(await runCounts("batchlast")).toEqual({ samples: 8, runs: 1 });
    await expectSameAsDirect(
      buildBatchAxisLastModel(),
      jobs.map((j, i) => ({ feeds: { x: new ort.Tensor("float32", j.x, [4, j.n]) }, view: views[i] })),
    );
  });

  it("shares a run only between jobs whose unbatched (scalar) inputs are equal", async () => {
    const jobs = [2, 3, 2, 3].map((scale, i) => ({ scale, x: Float32Array.from({ length: 3 }, (_, k) => k + i) }));
    const ids = await queuedBeforeWorker(fleet, async () => {
      const out: string[] = [];
      for (const j of jobs)
        out.push(
          await submit("scalar", {
            x: { dtype: "float32", shape: [1, 3], data: b64(j.x) },
            scale: { dtype: "float32", shape: [], data: [j.scale] },
          }),
        );
      return out;
    });
    const views = await Promise.all(ids.map(waitFor));
    // Two full runs of two (maxBatch 2): the interleaved equal pairs shared a run. A run
    // mixing scales would have given a job the other's scale: the direct comparison
    // below would catch it.
    expect(await runCounts("scalar")).toEqual({ samples: 4, runs: 2 });
    await expectSameAsDirect(
      buildScalarInputModel(),
      jobs.map((j, i) => ({
        feeds: {
          x: new ort.Tensor("float32", j.x, [1, 3]),
          scale: new ort.Tensor("float32", Float32Array.of(j.scale), []),
        },
        view: views[i],
      })),
    );
  });

  it("runs a batch larger than the manifest's runBatch as several runs, each job's result equal to a direct run", async () => {
    const jobs = [5, 1, 1].map((n, i) => ({ n, x: Float32Array.from({ length: 3 * n }, (_, k) => k * 0.25 - i) }));
    const ids = await queuedBeforeWorker(fleet, () =>
      Promise.all(
        jobs.map((j) =>
          submit("scalarcut", {
            x: { dtype: "float32", shape: [j.n, 3], data: b64(j.x) },
            scale: { dtype: "float32", shape: [], data: [3] },
          }),
        ),
      ),
    );
    const views = await Promise.all(ids.map(waitFor));
    expect(views.map((v) => v.status)).toEqual(["completed", "completed", "completed"]);
    // One batch of 7 samples (maxBatch 8), run as 2 + 2 + 2 + 1: the 5-sample job spans three runs.
    expect(await runCounts("scalarcut")).toEqual({ samples: 7, runs: 4 });
    expect(views.map((v) => v.result.batchSize)).toEqual([5, 1, 1]);
    await expectSameAsDirect(
      buildScalarInputModel(),
      jobs.map((j, i) => ({
        feeds: {
          x: new ort.Tensor("float32", j.x, [j.n, 3]),
          scale: new ort.Tensor("float32", Float32Array.of(3), []),
        },
        view: views[i],
      })),
    );
  });

  it("runs a model without a batch axis one job at a time", async () => {
    const xs = [0, 1, 2].map((i) => Float32Array.from({ length: 6 }, (_, k) => k - 3 + i));
    const ids = await queuedBeforeWorker(fleet, () =>
      Promise.all(xs.map((x) => submit("nobatch", { x: { dtype: "float32", shape: [2, 3], data: b64(x) } }))),
    );
    const views = await Promise.all(ids.map(waitFor));
    for (const v of views) expect(v.result.batchSize).toBe(1);
    // All three were waiting together, and still ran one per run.
    expect(await runCounts("nobatch")).toEqual({ samples: 3, runs: 3 });
    await expectSameAsDirect(
      buildNoBatchModel(),
      xs.map((x, i) => ({ feeds: { x: new ort.Tensor("float32", x, [2, 3]) }, view: views[i] })),
    );
  });
});

describe("timeouts, cancellation and failures", () => {
  const slowInput = { x: { dtype: "float32", shape: [1, 1], data: [1] } };

  it("fails a job past its own timeout with TIMEOUT at that timeout; a run past the model's timeout replaces the runner; keeps serving", async () => {
    const queued = "citadel_inference_queue_duration_seconds";
    const before = await histogramFor(queued, "slow");
    const id = await submit("slow", slowInput, { timeoutMs: 300 });
    const view = await waitFor(id);
    expect(view.status).toBe("failed");
    expect(view.error.code).toBe("TIMEOUT");
    // Failed at its own timeout, not when the run ended (the run itself takes ≈3 s): timed
    // from when its run started (acceptance plus the worker's accepted → run start time),
    // so the model's load and the batch's wait (startedAt is the take) do not count, nor a
    // slow client: only the worker's own timestamps.
    const after = await histogramFor(queued, "slow");
    expect(after.count - before.count).toBe(1);
    const runStart = Date.parse(view.createdAt) + (after.sum - before.sum) * 1000;
    expect(Date.parse(view.finishedAt) - runStart).toBeLessThan(2500);
    // The run goes on to the model's own timeout (600 ms), then the runner is cut off.
    let restarts = "";
    for (let i = 0; i < 1000 && !/reason="timeout".* [1-9]/.test(restarts); i++) {
      await new Promise((r) => setTimeout(r, 20));
      restarts = await metric("citadel_runner_restarts_total");
    }
    expect(restarts).toMatch(/reason="timeout".* [1-9]/);
    // Other models keep answering while the abandoned runner finishes on its own.
    const ok = await waitFor(
      await submit("nobatch", { x: { dtype: "float32", shape: [2, 3], data: [1, 2, 3, 4, 5, 6] } }),
    );
    expect(ok.status).toBe("completed");
  });

  it("aborts an active job on DELETE and reports it cancelled", async () => {
    // A run of seconds with a timeout far beyond it: only the DELETE can end it early.
    const id = await submit("slowcancel", slowInput);
    let status = "";
    for (let i = 0; i < 1200 && status !== "active"; i++) {
      status = (await fleet.request("GET", `/v1/jobs/${id}`)).json.status;
      if (status !== "active") await new Promise((r) => setTimeout(r, 25));
    }
    expect(status).toBe("active");
    const del = await fleet.request("DELETE", `/v1/jobs/${id}`);
    expect(del.status).toBe(202);
    const view = await waitFor(id);
    expect(view.status).toBe("cancelled");
    expect(view.error.code).toBe("CANCELLED");
  });

  it("retries a transient runtime error, then fails it with its reason, and opens the circuit", async () => {
    const x = { x: { dtype: "float32", shape: [1, 2], data: [1, 2] } };
    const views = await Promise.all([submit("failing", x), submit("failing", x)].map(async (p) => waitFor(await p)));
    for (const v of views) {
      expect(v.status).toBe("failed");
      expect(v.error.code).toBe("RUNTIME_ERROR");
      expect(v.error.message).toMatch(/inference failed/);
    }
    expect(await metric("citadel_circuit_state")).toMatch(/model="failing".* (1|2)/);
    const events = (await readAuditEntries(fleet.redis, fleet.prefix)).map(
      (e) => e.rec as { event?: string; model?: string; outcome?: string },
    );
    expect(events.some((e) => e.event === "circuit.opened" && e.model === "failing")).toBe(true);
    expect(
      events.filter((e) => e.event === "job.failed" && e.model === "failing" && e.outcome === "retrying").length,
    ).toBeGreaterThan(0);
  });

  it("never retries a run that passed its timeout", async () => {
    const id = await submit("slow", slowInput, { timeoutMs: 200 });
    const view = await waitFor(id);
    expect(view.error.code).toBe("TIMEOUT");
    // BullMQ's own count of attempts (the job allowed 3): the worker did not retry it.
    const q = new Queue(queueName("slow"), { connection: fleet.redis, prefix: queuePrefix(fleet.prefix, "slow") });
    const job = await q.getJob(id);
    await q.close();
    expect([job?.attemptsMade, job?.opts.attempts]).toEqual([1, 3]);
  });
});

/**
 * Jobs written straight into BullMQ, as anyone with write access to Redis could: the
 * worker re-validates them. A failure no retry can fix is failed at once with its code
 * (BullMQ's attemptsMade stays 1 although the job allows 3); a transient runtime error
 * is retried until its attempts run out.
 */
describe("failures a retry cannot fix are failed once; a transient one is retried", () => {
  let f: TestFleet;
  let queues: JobQueues;
  const blockingConnections: Redis[] = [];

  beforeAll(async () => {
    // Results over 1 KiB are a policy failure here; the circuit stays out of the way.
    f = await startTestFleet({ workers: 1, workerEnv: { MAX_RESULT_BYTES: "1024", CIRCUIT_FAILURES: "1000" } });
    await f.publish(buildNoBatchModel(), { name: "nobatch", version: "1", spec: { maxQueueDelayMs: 1 } });
    await f.publish(buildIdentityModel("float32", ["N", 512]), {
      name: "wide",
      version: "1",
      spec: { maxBatch: 4, maxQueueDelayMs: 1 },
    });
    await f.publish(buildFailingModel(), { name: "failing", version: "1", spec: { maxBatch: 4 } });
    queues = new JobQueues(
      f.redis,
      () => {
        const r = new Redis(redisUrl(), { maxRetriesPerRequest: null });
        blockingConnections.push(r);
        return r;
      },
      f.redis,
      { prefix: f.prefix, resultTtlMs: 60_000, failedTtlMs: 60_000, attempts: 3, backoffMs: 10 },
    );
  });
  afterAll(async () => {
    await queues?.close();
    for (const r of blockingConnections) r.disconnect();
    await f?.close();
  });

  const f32 = (...xs: number[]) => b64(Float32Array.from(xs));
  /** A well-formed job for `model`, with `over` written on top (a Redis writer is not bound by the schema). */
  const job = (model: string, inputs: Record<string, unknown>, over: Record<string, unknown> = {}) => ({
    tenant: "acme",
    model,
    version: "1",
    inputs,
    batch: 1,
    inputBytes: 64,
    timeoutMs: 5000,
    acceptedAt: Date.now(),
    deadline: Date.now() + 60_000,
    requestId: "written-into-redis",
    ...over,
  });

  /**
   * Writes a job as a Redis writer could: base64 tensors in `data.inputs` are stored as
   * the API stores them (described in the data, bytes beside it); `bytes` replaces the
   * stored bytes, and null stores none.
   */
  async function writeIntoRedis(model: string, data: Record<string, unknown>, bytes?: Buffer | null): Promise<string> {
    const id = `${model}.${randomBytes(18).toString("base64url")}`;
    if (typeof data.deadline !== "number") {
      // Not a job at all: straight onto BullMQ, with no stored inputs.
      await queues.queue(model).add(JOB_NAME, data as JobData, { jobId: id, attempts: 3 });
      return id;
    }
    const tensors = data.inputs;
    const stored =
      tensors && typeof tensors === "object" && !Array.isArray(tensors)
        ? storedInputs(tensors as Parameters<typeof storedInputs>[0])
        : { meta: tensors, bytes: Buffer.alloc(0) };
    const written = { ...data, inputs: stored.meta } as JobData;
    // No bytes: the job alone, as the API never adds it (deleting its bytes after the
    // enqueue raced a worker that took the job in between).
    if (bytes === null) await queues.queue(model).add(JOB_NAME, written, { jobId: id, attempts: 3 });
    else await queues.enqueueMany(model, [{ id, data: written, inputs: bytes ?? stored.bytes, priority: "normal" }]);
    return id;
  }

  /** The job once BullMQ holds it as failed or completed (bounded: a hang fails the test). */
  async function settled(model: string, id: string): Promise<Job> {
    const q = queues.queue(model);
    for (let i = 0; i < 1200; i++) {
      const state = await q.getJobState(id);
      if (state === "failed" || state === "completed") {
        const j = await q.getJob(id);
        if (j) return j;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`job ${id} never settled`);
  }

  // Each job is built when its test runs: a deadline fixed at collection time could pass on a slow machine.
  const cases: [string, string, () => Record<string, unknown>, string][] = [
    [
      "a payload that is not a job",
      "nobatch",
      () => ({ tenant: "acme", model: "nobatch", inputs: "not tensors" }),
      "JOB_INVALID",
    ],
    [
      "an input of the wrong shape",
      "nobatch",
      () => job("nobatch", { x: { dtype: "float32", shape: [3, 3], data: f32(1, 2, 3, 4, 5, 6, 7, 8, 9) } }),
      "TENSOR_SHAPE_MISMATCH",
    ],
    [
      "a NaN input",
      "nobatch",
      () => job("nobatch", { x: { dtype: "float32", shape: [2, 3], data: f32(1, 2, Number.NaN, 4, 5, 6) } }),
      "TENSOR_NON_FINITE",
    ],
    [
      "a batch count that does not match its inputs",
      "wide",
      () => job("wide", { x: { dtype: "float32", shape: [2, 512], data: b64(new Float32Array(1024)) } }, { batch: 1 }),
      "JOB_INVALID",
    ],
    [
      "a job past its deadline",
      "nobatch",
      () =>
        job(
          "nobatch",
          { x: { dtype: "float32", shape: [2, 3], data: f32(1, 2, 3, 4, 5, 6) } },
          { deadline: Date.now() - 1000 },
        ),
      "DEADLINE_EXCEEDED",
    ],
    [
      "a result larger than MAX_RESULT_BYTES",
      "wide",
      () => job("wide", { x: { dtype: "float32", shape: [1, 512], data: b64(new Float32Array(512).fill(0.5)) } }),
      "RESULT_TOO_LARGE",
    ],
  ];

  const six = () => job("nobatch", { x: { dtype: "float32", shape: [2, 3], data: f32(1, 2, 3, 4, 5, 6) } });
  const stored: [string, Buffer | null, string][] = [
    ["stored input bytes shorter than their description", Buffer.alloc(20), "JOB_INVALID"],
    ["stored input bytes longer than their description", Buffer.alloc(28), "JOB_INVALID"],
    ["no stored input bytes", null, "JOB_INVALID"],
    [
      "stored bytes that hold a NaN",
      Buffer.from(Float32Array.of(1, 2, 3, Number.NaN, 5, 6).buffer),
      "TENSOR_NON_FINITE",
    ],
  ];

  it.each(stored)("%s: failed once with its code", async (_label, bytes, code) => {
    const j = await settled("nobatch", await writeIntoRedis("nobatch", six(), bytes));
    expect(await j.getState()).toBe("failed");
    expect(parseFailure(j.failedReason).code).toBe(code);
    expect([j.attemptsMade, j.opts.attempts]).toEqual([1, 3]);
  });

  it.each(cases)("%s: failed once with its code, never retried", async (_label, model, data, code) => {
    const j = await settled(model, await writeIntoRedis(model, data()));
    expect(await j.getState()).toBe("failed");
    expect(parseFailure(j.failedReason).code).toBe(code);
    expect([j.attemptsMade, j.opts.attempts]).toEqual([1, 3]);
  });

  it("a transient RUNTIME_ERROR is retried until its attempts run out", async () => {
    const data = job("failing", { x: { dtype: "float32", shape: [1, 2], data: f32(1, 2) } });
    const j = await settled("failing", await writeIntoRedis("failing", data));
    expect(await j.getState()).toBe("failed");
    expect(parseFailure(j.failedReason).code).toBe("RUNTIME_ERROR");
    expect([j.attemptsMade, j.opts.attempts]).toEqual([3, 3]);
  });
});

describe("audit and metrics", () => {
  it("writes a hash-chained audit trail that verifies, and detects tampering", async () => {
    await fleet.workers[0]?.close();
    await fleet.api.close();
    const ok = await verifyAuditStream(fleet.redis, fleet.prefix, fleet.auditKeys);
    expect(ok.problems).toEqual([]);
    expect(ok.records).toBeGreaterThan(20);
    // The writer with the most records: its sixth is the victim.
    const entries = await readAuditEntries(fleet.redis, fleet.prefix);
    const counts = new Map<string, number>();
    for (const e of entries) counts.set(e.writer, (counts.get(e.writer) ?? 0) + 1);
    const writer = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] ?? "";
    const victim = entries.filter((e) => e.writer === writer)[5];
    const stream = auditStreamKey(fleet.prefix, writer);
    // Edit: delete a record and append a forged copy with a changed field.
    await fleet.redis.xdel(stream, victim?.id ?? "");
    const edited = await verifyAuditStream(fleet.redis, fleet.prefix, fleet.auditKeys);
    expect(edited.ok).toBe(false);
    expect(edited.problems.join("\n")).toMatch(/deleted or reordered|does not link/);
    await fleet.redis.xadd(stream, "*", "r", JSON.stringify({ ...victim?.rec, outcome: "forged" }));
    const forged = await verifyAuditStream(fleet.redis, fleet.prefix, fleet.auditKeys);
    expect(forged.problems.join("\n")).toMatch(/edited/);
  });
});
