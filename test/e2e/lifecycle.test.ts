import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { freePort, startProcess } from "@citadel/cli/fleet";
import { buildConvNet, buildSlowModel } from "@citadel/onnx";
import { keys } from "@citadel/queue";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { b64, startTestFleet, type TestFleet } from "../support/fleet.js";
import { tempDir } from "../support/temp-dirs.js";

const conv = { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(new Float32Array(3072).fill(0.1)) } };
const slow = { x: { dtype: "float32", shape: [1, 1], data: [1] } };

async function final(fleet: TestFleet, id: string) {
  for (;;) {
    const r = await fleet.request("GET", `/v1/jobs/${id}?wait=10000`);
    if (r.json.status !== "queued" && r.json.status !== "active") return r.json;
  }
}

describe("deadlines", () => {
  let fleet: TestFleet;
  beforeAll(async () => {
    fleet = await startTestFleet({ workers: 0, env: { QUEUE_TTL_MS: "1000" } });
    await fleet.publish(buildConvNet(), { name: "conv", version: "1", spec: {} });
  });
  afterAll(async () => fleet?.close());

  it("fails a job that waited past its deadline with DEADLINE_EXCEEDED, without running it", async () => {
    const sub = await fleet.request("POST", "/v1/jobs", { model: "conv", inputs: conv });
    expect(sub.status).toBe(202);
    const deadline = Date.now() + 1100;
    while (Date.now() < deadline) await new Promise((r) => setTimeout(r, deadline - Date.now()));
    const w = await fleet.startWorker();
    const view = await final(fleet, sub.json.id);
    expect([view.status, view.error.code]).toEqual(["failed", "DEADLINE_EXCEEDED"]);
    const metrics = await (await fetch(`${w.metricsUrl}/metrics`)).text();
    expect(metrics).toMatch(/citadel_inference_request_failure_total\{[^}]*reason="DEADLINE_EXCEEDED"[^}]*\} 1/);
    expect(metrics).not.toMatch(/citadel_inference_exec_count_total\{[^}]*model="conv"/);
  });
});

describe("a hung runner is contained", () => {
  let fleet: TestFleet;
  beforeAll(async () => {
    fleet = await startTestFleet({ workers: 1, workerEnv: { MAX_HUNG_RUNNERS: "0" } });
    // ≈4 s per run: the abandoned run outlasts the checks that follow its timeout by far.
    await fleet.publish(buildSlowModel({ iterations: 10_000 }), {
      name: "slow",
      version: "1",
      spec: { timeoutMs: 100 },
    });
  });
  afterAll(async () => fleet?.close());

  it("reports unhealthy while an abandoned run is stuck, and healthy once it returns", async () => {
    const w = fleet.workers[0];
    expect((await fetch(`${w?.metricsUrl}/healthz`)).status).toBe(200);
    const sub = await fleet.request("POST", "/v1/jobs", { model: "slow", inputs: slow });
    expect((await final(fleet, sub.json.id)).error.code).toBe("TIMEOUT");
    expect((await fetch(`${w?.metricsUrl}/healthz`)).status).toBe(503);
    let status = 503;
    for (let i = 0; i < 600 && status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 50));
      status = (await fetch(`${w?.metricsUrl}/healthz`)).status;
    }
    expect(status).toBe(200);
  });
});

describe("graceful shutdown", () => {
  let fleet: TestFleet;
  beforeAll(async () => {
    fleet = await startTestFleet({ workers: 0 });
    await fleet.publish(buildConvNet(), { name: "conv", version: "1", spec: {} });
    // ≈10 s per run: long enough that a first SIGTERM cannot finish before the second.
    await fleet.publish(buildSlowModel({ iterations: 30_000 }), {
      name: "slowest",
      version: "1",
      spec: { timeoutMs: 60_000 },
    });
    // ≈3 s per run (one intra-op thread): a SIGTERM sent as soon as a run is seen in flight
    // lands well inside it, even when the machine stalls for a second.
    await fleet.publish(buildSlowModel({ iterations: 8000 }), {
      name: "slowish",
      version: "1",
      spec: { timeoutMs: 30_000 },
    });
  });
  afterAll(async () => fleet?.close());

  async function workerProcess(extra: Record<string, string> = {}) {
    const port = await freePort();
    const dir = tempDir("worker");
    const proc = await startProcess(
      "worker",
      "worker",
      { ...fleet.env, METRICS_HOST: "127.0.0.1", METRICS_PORT: String(port), RUNTIME_THREADS: "1", ...extra },
      dir,
      `http://127.0.0.1:${port}/readyz`,
    );
    return { ...proc, metricsUrl: `http://127.0.0.1:${port}`, log: path.join(dir, "worker.log") };
  }

  /** A counter or histogram count for `model` from a worker's /metrics (0 before its first sample). */
  async function counter(url: string, name: string, model: string): Promise<number> {
    const text = await (await fetch(`${url}/metrics`)).text();
    const m = new RegExp(`^${name}\\{[^}]*model="${model}"[^}]*\\} ([0-9.e+]+)$`, "m").exec(text);
    return m ? Number(m[1]) : 0;
  }

  async function until(what: string, cond: () => Promise<boolean> | boolean, timeoutMs = 60_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!(await cond())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  it("on SIGTERM finishes the in-flight batch, returns nothing lost, and exits 0 within the bound", async () => {
    const workerId = `term-${randomBytes(3).toString("hex")}`;
    // The bound is generous: the run in flight (≈3 s) may take several times as long on a loaded machine.
    const proc = await workerProcess({ SHUTDOWN_TIMEOUT_MS: "60000", WORKER_ID: workerId });
    const ids: string[] = [];
    const submit = async () => {
      const r = await fleet.request("POST", "/v1/jobs", { model: "slowish", inputs: slow });
      expect(r.status, JSON.stringify(r.json)).toBe(202);
      ids.push(r.json.id as string);
    };
    await Promise.all([submit(), submit(), submit()]);
    // A run is in flight: more of the jobs have had their queue time observed (done as
    // their run starts) than have been counted inferred (done as it ends; one sample
    // each). The first count is read first, so the inequality holds at the second read.
    // A poll that came between runs, or after the last, finds nothing in flight: the
    // worker gets another job, so a run is always coming and one poll lands inside it.
    let started = 0;
    await until("a run of slowish in flight", async () => {
      started = await counter(proc.metricsUrl, "citadel_inference_queue_duration_seconds_count", "slowish");
      const finished = await counter(proc.metricsUrl, "citadel_inference_count_total", "slowish");
      if (started > finished) return true;
      if (started >= ids.length && ids.length < 20) await submit();
      return false;
    });
    // Exit 0 is the bound: past SHUTDOWN_TIMEOUT_MS the worker SIGKILLs itself instead.
    expect(await proc.stop("SIGTERM")).toBe(0);
    // Whatever was not finished went back to the queue: a new worker completes it.
    const next = await workerProcess();
    const views = await Promise.all(ids.map((id) => final(fleet, id)));
    expect(views.map((v) => v.status)).toEqual(ids.map(() => "completed"));
    await next.stop();
    // The run in flight at SIGTERM was finished by the worker that got the signal (its
    // jobs' results name it), not handed to the next one.
    const finishers = await Promise.all(
      ids.map(async (id) => {
        const raw = await fleet.redis.hget(keys.job(fleet.prefix, "slowish", id), "returnvalue");
        return (JSON.parse(raw ?? "{}") as { workerId?: string }).workerId;
      }),
    );
    expect(finishers.filter((w) => w === workerId).length).toBeGreaterThanOrEqual(started);
  });

  it("a second signal forces exit", async () => {
    const proc = await workerProcess({ SHUTDOWN_TIMEOUT_MS: "60000" });
    const sub = await fleet.request("POST", "/v1/jobs", { model: "slowest", inputs: slow });
    expect(sub.status, JSON.stringify(sub.json)).toBe(202);
    // A run is in flight (see above), so the first signal cannot finish at once.
    await until("a run of slowest to start", async () => {
      const started = await counter(proc.metricsUrl, "citadel_inference_queue_duration_seconds_count", "slowest");
      return started >= 1;
    });
    proc.child.kill("SIGTERM");
    // Signals of one kind do not queue: wait until the first one was handled.
    await until("the worker to begin its graceful stop", () =>
      existsSync(proc.log) ? readFileSync(proc.log, "utf8").includes("worker stopping") : false,
    );
    expect(await proc.stop("SIGTERM")).toBe("SIGKILL");
    // Forced by the second signal, not by the 60 s shutdown deadline.
    expect(readFileSync(proc.log, "utf8")).toMatch(/second SIGTERM, exiting now/);
    expect((await fleet.request("GET", `/v1/jobs/${sub.json.id}`)).json.status).not.toBe("completed");
  });
});
