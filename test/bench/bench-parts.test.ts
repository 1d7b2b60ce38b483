/** The benchmark's own parts that decide what a figure means: body layout, latency counting, medians, targets. */
import { type LoadPhases, noteFirstRun, observeLoadPhases, workerMetrics } from "@citadel/serving";
import { createLogger, createRegistry } from "@citadel/telemetry";
import { describe, expect, it } from "vitest";
import { type ColdMetrics, type ColdSplit, coldSplit, coldTargets, parseColdMetrics } from "./cold-start.js";
import { manifestBatches, RUN_BATCH_GAIN } from "./manifest-batches.js";
import { closedLoop, type JobOutcome, medianRun, openLoop } from "./measure.js";
import { passes } from "./targets.js";
import { binaryBody, jsonBody, stackSamples } from "./wire.js";

describe("binary bodies", () => {
  it("are a JSON header of headerLength bytes, then each input's little-endian bytes in header order", () => {
    const a = Float32Array.from([1.5, -2, 3.25]);
    const b = Float32Array.from([7]);
    const body = binaryBody("m", [
      { name: "a", shape: [1, 3], data: a },
      { name: "b", shape: [1, 1], data: b },
    ]);
    const header = JSON.parse(Buffer.from(body.body.subarray(0, body.headerLength)).toString("utf8"));
    expect(header).toEqual({
      model: "m",
      inputs: [
        { name: "a", datatype: "FP32", shape: [1, 3], parameters: { binary_data_size: 12 } },
        { name: "b", datatype: "FP32", shape: [1, 1], parameters: { binary_data_size: 4 } },
      ],
    });
    const rest = Buffer.from(body.body.subarray(body.headerLength));
    expect(rest.length).toBe(16);
    expect([0, 4, 8, 12].map((o) => rest.readFloatLE(o))).toEqual([1.5, -2, 3.25, 7]);
  });

  it("carry the same tensor as the JSON body", () => {
    const data = stackSamples([Float32Array.from([1, 2]), Float32Array.from([3, 4])], 1, 3);
    expect([...data]).toEqual([3, 4, 1, 2, 3, 4]);
    const json = JSON.parse(jsonBody("m", [{ name: "x", shape: [3, 2], data }]).body);
    const raw = Buffer.from(json.inputs.x.data, "base64");
    const bin = binaryBody("m", [{ name: "x", shape: [3, 2], data }]);
    expect(Buffer.from(bin.body.subarray(bin.headerLength)).equals(raw)).toBe(true);
  });
});

describe("latency counting", () => {
  const never = () => new Promise<JobOutcome>(() => undefined);
  const quick = () => new Promise<JobOutcome>((r) => setTimeout(() => r({ ok: true, latencyMs: 1 }), 1));

  it("counts a job in flight through the whole closed-loop window as unfinished, at least the window long", async () => {
    const r = await closedLoop(2, 20, 100, (i) => (i === 0 ? never() : quick()));
    expect(r.unfinished).toBe(1);
    expect(Math.max(...r.latencies)).toBeGreaterThanOrEqual(100);
  });

  it("counts an open-loop job that never finishes as unfinished, not as a missing sample", async () => {
    const r = await openLoop(50, 20, 100, (i) => (i === 3 ? never() : quick()));
    expect(r.unfinished).toBe(1);
    expect(Math.max(...r.latencies)).toBeGreaterThanOrEqual(100);
  });

  it("keeps failures out of the latencies and counts them by code", async () => {
    const r = await openLoop(50, 0, 100, () => Promise.resolve({ ok: false, latencyMs: 1, code: "X" }));
    expect(r.latencies).toEqual([]);
    expect(r.failed).toBeGreaterThan(0);
    expect(Object.keys(r.failures)).toEqual(["X"]);
  });
});

describe("medians and targets", () => {
  it("keeps the median run, the lower middle one for an even count", () => {
    expect(medianRun([{ v: 3 }, { v: 1 }, { v: 2 }], (x) => x.v)).toEqual({ v: 2 });
    expect(medianRun([{ v: 4 }, { v: 1 }], (x) => x.v)).toEqual({ v: 1 });
    expect(() => medianRun([], () => 0)).toThrow();
  });

  it("says pass, miss or n/a", () => {
    expect(passes({ name: "", value: 1.5, op: ">=", goal: 1.5, unit: "×" })).toBe(true);
    expect(passes({ name: "", value: 11, op: "<=", goal: 10, unit: " ms" })).toBe(false);
    expect(passes({ name: "", value: null, op: ">=", goal: 1, unit: "×" })).toBeNull();
    expect(passes({ name: "", value: Number.NaN, op: "<=", goal: 1, unit: "" })).toBeNull();
  });
});

describe("submit and wait (the client side of the wire contract)", () => {
  it("sends binary bodies as octet-stream with the header length, takes a 200 view, and falls back to GET on 202", async () => {
    const { createServer } = await import("node:http");
    const { Client } = await import("./harness.js");
    const seen: { method?: string; url?: string; type?: string; headerLength?: string; bytes: number }[] = [];
    const view = { id: "m.abc", status: "completed", result: { outputs: {}, batchSize: 1, inferenceMs: 1 } };
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        seen.push({
          method: req.method,
          url: req.url,
          type: req.headers["content-type"],
          headerLength: req.headers["inference-header-content-length"] as string | undefined,
          bytes: Buffer.concat(chunks).length,
        });
        res.setHeader("content-type", "application/json");
        if (req.method === "POST" && req.headers["content-type"] === "application/octet-stream") {
          res.writeHead(200).end(JSON.stringify(view));
        } else if (req.method === "POST") res.writeHead(202).end(JSON.stringify({ id: "m.abc", status: "queued" }));
        else res.writeHead(200).end(JSON.stringify(view));
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const { port } = server.address() as { port: number };
      const client = new Client(`http://127.0.0.1:${port}`, "key");
      const bin = binaryBody("m", [{ name: "x", shape: [1, 2], data: Float32Array.from([1, 2]) }]);
      const a = await client.submitAndWait(bin.body, { headerLength: bin.headerLength, waitMs: 5000 });
      expect(a).toMatchObject({ status: 200, view: { status: "completed" } });
      expect(seen[0]).toEqual({
        method: "POST",
        url: "/v1/jobs?wait=5000",
        type: "application/octet-stream",
        headerLength: String(bin.headerLength),
        bytes: bin.body.length,
      });
      const b = await client.submitAndWait(
        jsonBody("m", [{ name: "x", shape: [1, 1], data: Float32Array.from([1]) }]).body,
        {
          waitMs: 5000,
        },
      );
      expect(b).toMatchObject({ status: 202, view: { status: "completed" } });
      expect(seen.slice(1).map((s) => [s.method, s.url])).toEqual([
        ["POST", "/v1/jobs?wait=5000"],
        ["GET", "/v1/jobs/m.abc?wait=5000"],
      ]);
      expect(seen[1]?.type).toBe("application/json");
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it("reports a refusal (e.g. 415 before the binary route exists) with its status and code, without throwing", async () => {
    const { createServer } = await import("node:http");
    const { Client } = await import("./harness.js");
    const server = createServer((req, res) => {
      req.resume();
      req.on("end", () =>
        res
          .writeHead(415, { "content-type": "application/json" })
          .end(JSON.stringify({ error: { code: "UNSUPPORTED_MEDIA_TYPE", message: "send application/json" } })),
      );
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const { port } = server.address() as { port: number };
      const bin = binaryBody("m", [{ name: "x", shape: [1, 1], data: Float32Array.from([1]) }]);
      const r = await new Client(`http://127.0.0.1:${port}`, "key").submitAndWait(bin.body, {
        headerLength: bin.headerLength,
      });
      expect(r).toEqual({ status: 415, code: "UNSUPPORTED_MEDIA_TYPE", message: "send application/json" });
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});

describe("cold start", () => {
  it("reads the phases a worker's metrics registry exposes, for one model only", async () => {
    const registry = createRegistry("worker", false);
    const metrics = workerMetrics(registry);
    const log = createLogger({ name: "t", level: "silent" });
    const phases: LoadPhases = { fetch: 10, key: 4, decrypt: 2, session: 300, loadMs: 316.5 };
    observeLoadPhases(metrics, "a", "1", phases);
    observeLoadPhases(metrics, "b", "1", { ...phases, session: 999 });
    noteFirstRun(phases, 7, { metrics, log, model: "a", version: "1" });
    noteFirstRun(phases, 70, { metrics, log, model: "a", version: "1" });
    const text = `${await registry.metrics()}citadel_worker_start_time_seconds{app="worker"} 1700000000.25
citadel_worker_start_seconds{stage="main",app="worker"} 0.4
citadel_worker_start_seconds{stage="ready",app="worker"} 0.45
`;
    const m = parseColdMetrics(text, "a");
    expect(m.startTime).toBe(1700000000.25);
    expect(m.stages).toEqual({ main: 0.4, ready: 0.45 });
    expect(m.phases.fetch).toBeCloseTo(0.01, 9);
    expect(m.phases.session).toBeCloseTo(0.3, 9);
    // The first run is recorded once per loaded session.
    expect(m.phases.first_run).toBeCloseTo(0.007, 9);
    expect(m.counts).toEqual({ fetch: 1, key: 1, decrypt: 1, session: 1, first_run: 1 });
    expect(phases.firstRun).toBe(7);
  });

  it("splits submit → result into parts that add up to the total", () => {
    const m: ColdMetrics = {
      startTime: 1000.1,
      stages: { main: 0.3, ready: 0.35 },
      phases: { fetch: 0.01, key: 0.004, decrypt: 0.002, session: 0.2, first_run: 0.008 },
      counts: { fetch: 1, key: 1, decrypt: 1, session: 1, first_run: 1 },
    };
    const s = coldSplit({ submitAt: 1_000_000, spawnAt: 1_000_020, resultAt: 1_000_900 }, m);
    expect(s.total).toBe(900);
    expect(s.submit).toBe(20);
    // The process began 80 ms after the spawn (exec, node's own start), main 300 ms later.
    expect(s.spawnToMain).toBeCloseTo(380, 6);
    expect(s.mainToReady).toBeCloseTo(50, 6);
    expect(s.processStart).toBeCloseTo(430, 6);
    const parts = s.submit + s.processStart + s.fetch + s.key + s.decrypt + s.session + s.firstRun + s.rest;
    expect(parts).toBeCloseTo(s.total, 6);
    expect(s.rest).toBeCloseTo(900 - 20 - 430 - 10 - 4 - 2 - 200 - 8, 6);
    // A worker that reports no start (an old build) leaves the figures unknown, not 0.
    expect(
      Number.isNaN(coldSplit({ submitAt: 0, spawnAt: 1, resultAt: 2 }, { ...m, startTime: undefined }).processStart),
    ).toBe(true);
  });

  it("has one target per model: submit → result within 3 s", () => {
    const split = (total: number): ColdSplit => ({
      total,
      submit: 0,
      processStart: 0,
      spawnToMain: 0,
      mainToReady: 0,
      fetch: 0,
      key: 0,
      decrypt: 0,
      session: 0,
      firstRun: 0,
      rest: total,
    });
    const t = coldTargets({
      keys: "vault",
      form: "source",
      repeats: 1,
      results: [
        { model: "a", split: split(2500), totals: [2500], warmP50: 10, warmJobs: 5 },
        { model: "b", split: split(3100), totals: [3100], warmP50: 10, warmJobs: 5 },
      ],
    });
    expect(t.map(passes)).toEqual([true, false]);
    expect(coldTargets(null)).toEqual([]);
  });
});

describe("the manifest's batch sizes", () => {
  const limit = (byBatch: Record<number, number>) => {
    const [best, sps] = Object.entries(byBatch).reduce((a, b) => (b[1] > a[1] ? b : a));
    return { bestBatch: Number(best), samplesPerSec: sps, byBatch };
  };
  it("runs in parts of the best batch only where onnxruntime is clearly faster per sample there", () => {
    expect(manifestBatches(limit({ 1: 400, 4: 917, 8: 800, 16: 622, 32: 600 }), 16)).toEqual({
      maxBatch: 16,
      runBatch: 4,
    });
    // Within RUN_BATCH_GAIN of maxBatch: whole runs (heavy conv's best batch of 1 by 2%).
    expect(manifestBatches(limit({ 1: 336, 4: 328, 8: 330, 16: 330, 32: 335 }), 16)).toEqual({ maxBatch: 16 });
    expect(RUN_BATCH_GAIN).toBeGreaterThan(1);
  });
  it("takes jobs of the best batch when it is past the least, and of the least otherwise", () => {
    expect(manifestBatches(limit({ 1: 100, 16: 200, 32: 300 }), 16)).toEqual({ maxBatch: 32 });
    expect(manifestBatches(limit({ 1: 100, 16: 200, 32: 150 }), 16)).toEqual({ maxBatch: 16 });
  });
});
