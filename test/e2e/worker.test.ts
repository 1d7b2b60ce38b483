import { verifyAuditStream } from "@citadel/audit";
import {
  buildBatchAxisLastModel,
  buildFailingModel,
  buildMultiInputModel,
  buildNoBatchModel,
  buildScalarInputModel,
  buildSlowModel,
} from "@citadel/onnx";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { b64, decodeF32, queuedBeforeWorker, startTestFleet, type TestFleet } from "../support/fleet.js";

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
  await fleet.publish(buildScalarInputModel(), {
    name: "scalar",
    version: "1",
    spec: { maxBatch: 8, maxQueueDelayMs: 20 },
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
    expect(await metric('citadel_inference_exec_count_total{model="multi"')).toMatch(/ 1$/);
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
    expect(await metric('citadel_inference_exec_count_total{model="batchlast"')).toMatch(/ 1$/);
    await expectSameAsDirect(
      buildBatchAxisLastModel(),
      jobs.map((j, i) => ({ feeds: { x: new ort.Tensor("float32", j.x, [4, j.n]) }, view: views[i] })),
    );
  });

  it("shares a run only between jobs whose unbatched (scalar) inputs are equal", async () => {
    const jobs = [2, 3, 2, 3].map((scale, i) => ({ scale, x: Float32Array.from({ length: 3 }, (_, k) => k + i) }));
    const ids = await Promise.all(
      jobs.map((j) =>
        submit("scalar", {
          x: { dtype: "float32", shape: [1, 3], data: b64(j.x) },
          scale: { dtype: "float32", shape: [], data: [j.scale] },
        }),
      ),
    );
    const views = await Promise.all(ids.map(waitFor));
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

  it("runs a model without a batch axis one job at a time", async () => {
    const xs = [0, 1, 2].map((i) => Float32Array.from({ length: 6 }, (_, k) => k - 3 + i));
    const ids = await Promise.all(
      xs.map((x) => submit("nobatch", { x: { dtype: "float32", shape: [2, 3], data: b64(x) } })),
    );
    const views = await Promise.all(ids.map(waitFor));
    for (const v of views) expect(v.result.batchSize).toBe(1);
    await expectSameAsDirect(
      buildNoBatchModel(),
      xs.map((x, i) => ({ feeds: { x: new ort.Tensor("float32", x, [2, 3]) }, view: views[i] })),
    );
  });
});

describe("timeouts, cancellation and failures", () => {
  const slowInput = { x: { dtype: "float32", shape: [1, 1], data: [1] } };

  it("fails a job past its own timeout with TIMEOUT at that timeout; a run past the model's timeout replaces the runner; keeps serving", async () => {
    const t0 = Date.now();
    const id = await submit("slow", slowInput, { timeoutMs: 300 });
    const view = await waitFor(id);
    const took = Date.now() - t0;
    expect(view.status).toBe("failed");
    expect(view.error.code).toBe("TIMEOUT");
    expect(took).toBeLessThan(2500); // the run itself takes ≈3 s
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
    const id = await submit("slow", slowInput, { timeoutMs: 600 });
    for (let i = 0; i < 200; i++) {
      if ((await fleet.request("GET", `/v1/jobs/${id}`)).json.status === "active") break;
      await new Promise((r) => setTimeout(r, 10));
    }
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
    const stream = await fleet.redis.xrange(`${fleet.prefix}:audit`, "-", "+");
    const events = stream.map(
      ([, f]) => JSON.parse(f[1] ?? "{}") as { event: string; model?: string; outcome?: string },
    );
    expect(events.some((e) => e.event === "circuit.opened" && e.model === "failing")).toBe(true);
    expect(
      events.filter((e) => e.event === "job.failed" && e.model === "failing" && e.outcome === "retrying").length,
    ).toBeGreaterThan(0);
  });

  it("never retries validation or policy failures", async () => {
    const id = await submit("slow", slowInput, { timeoutMs: 200 });
    const view = await waitFor(id);
    expect(view.error.code).toBe("TIMEOUT");
    const stream = await fleet.redis.xrange(`${fleet.prefix}:audit`, "-", "+");
    const mine = stream
      .map(([, f]) => JSON.parse(f[1] ?? "{}") as { event: string; jobId?: string; outcome?: string })
      .filter((e) => e.jobId === id);
    expect(mine.filter((e) => e.event === "job.failed").map((e) => e.outcome)).toEqual(["failed"]);
  });
});

describe("audit and metrics", () => {
  it("writes a hash-chained audit trail that verifies, and detects tampering", async () => {
    await fleet.workers[0]?.close();
    await fleet.api.close();
    const ok = await verifyAuditStream(fleet.redis, fleet.prefix, fleet.auditKeys);
    expect(ok.problems).toEqual([]);
    expect(ok.records).toBeGreaterThan(20);
    const entries = await fleet.redis.xrange(`${fleet.prefix}:audit`, "-", "+");
    const [victimId, victimFields] = entries[5] ?? [];
    // Edit: delete a record and append a forged copy with a changed field.
    const rec = JSON.parse(victimFields?.[1] ?? "{}");
    await fleet.redis.xdel(`${fleet.prefix}:audit`, victimId as string);
    const edited = await verifyAuditStream(fleet.redis, fleet.prefix, fleet.auditKeys);
    expect(edited.ok).toBe(false);
    expect(edited.problems.join("\n")).toMatch(/deleted or reordered|does not link/);
    await fleet.redis.xadd(`${fleet.prefix}:audit`, "*", "r", JSON.stringify({ ...rec, outcome: "forged" }));
    const forged = await verifyAuditStream(fleet.redis, fleet.prefix, fleet.auditKeys);
    expect(forged.problems.join("\n")).toMatch(/edited/);
  });
});
