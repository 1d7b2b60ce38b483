import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort, startProcess } from "@citadel/cli/fleet";
import { buildConvNet, buildSlowModel } from "@citadel/onnx";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { b64, startTestFleet, type TestFleet } from "../support/fleet.js";

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
    await fleet.publish(buildSlowModel({ iterations: 3000 }), { name: "slow", version: "1", spec: { timeoutMs: 100 } });
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
    await fleet.publish(buildSlowModel({ iterations: 3000 }), {
      name: "slowish",
      version: "1",
      spec: { timeoutMs: 30_000 },
    });
  });
  afterAll(async () => fleet?.close());

  async function workerProcess(extra: Record<string, string> = {}) {
    const port = await freePort();
    const dir = mkdtempSync(path.join(os.tmpdir(), "citadel-worker-"));
    return startProcess(
      "worker",
      "worker",
      { ...fleet.env, METRICS_HOST: "127.0.0.1", METRICS_PORT: String(port), RUNTIME_THREADS: "1", ...extra },
      dir,
      `http://127.0.0.1:${port}/readyz`,
    );
  }

  it("on SIGTERM finishes the in-flight batch, returns nothing lost, and exits 0 within the bound", async () => {
    const proc = await workerProcess({ SHUTDOWN_TIMEOUT_MS: "20000" });
    const ids = await Promise.all(
      Array.from(
        { length: 3 },
        async () => (await fleet.request("POST", "/v1/jobs", { model: "slowish", inputs: slow })).json.id as string,
      ),
    );
    for (let i = 0; i < 200; i++) {
      if ((await fleet.request("GET", `/v1/jobs/${ids[0]}`)).json.status === "active") break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const t0 = Date.now();
    expect(await proc.stop("SIGTERM")).toBe(0);
    expect(Date.now() - t0).toBeLessThan(20_000);
    // Whatever was not finished went back to the queue: a new worker completes it.
    const next = await workerProcess();
    const views = await Promise.all(ids.map((id) => final(fleet, id)));
    expect(views.map((v) => v.status)).toEqual(["completed", "completed", "completed"]);
    await next.stop();
  });

  it("a second signal forces exit", async () => {
    const proc = await workerProcess({ SHUTDOWN_TIMEOUT_MS: "60000" });
    const sub = await fleet.request("POST", "/v1/jobs", { model: "slowest", inputs: slow });
    expect(sub.status, JSON.stringify(sub.json)).toBe(202);
    const id = sub.json.id;
    const until = Date.now() + 60_000;
    let status = "";
    let last: unknown = null;
    while (status !== "active" && Date.now() < until) {
      const r = await fleet.request("GET", `/v1/jobs/${id}`);
      last = r.json;
      status = r.json.status;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(status, JSON.stringify(last)).toBe("active"); // a run is in flight, so the first signal cannot finish at once
    proc.child.kill("SIGTERM");
    // Signals of one kind do not queue: give the first one time to be handled.
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    expect(await proc.stop("SIGTERM")).toBe("SIGKILL");
    expect(Date.now() - t0).toBeLessThan(5000);
  });
});
