/**
 * The cold-start split a worker reports (issue 14): per model load the phases fetch,
 * key (a real Vault Transit unwrap here), decrypt, session and first run, in the
 * "model loaded" / "model first run" log lines and in citadel_model_load_phase_seconds;
 * and, for a worker process, its start-up stages in citadel_worker_start_seconds.
 * No timing thresholds: only that each phase was measured and that they add up.
 */
import path from "node:path";
import { freePort, startProcess } from "@citadel/cli/fleet";
import { buildHeavyConvNet } from "@citadel/onnx";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseColdMetrics } from "../bench/cold-start.js";
import { b64 } from "../support/fleet.js";
import { startVaultTestFleet, unwrapCalls } from "../support/vault-fleet.js";

let vf: Awaited<ReturnType<typeof startVaultTestFleet>>;

beforeAll(async () => {
  vf = await startVaultTestFleet();
  await vf.fleet.publish(buildHeavyConvNet(), {
    name: "heavy",
    version: "1",
    spec: { maxBatch: 4, maxQueueDelayMs: 1, executionProviders: ["cpu"] },
  });
});
afterAll(async () => {
  await vf?.close();
});

async function runOne(seed: number): Promise<void> {
  const x = Float32Array.from({ length: 3 * 64 * 64 }, (_, i) => Math.sin(i + seed));
  const r = await vf.fleet.request("POST", "/v1/jobs?wait=30000", {
    model: "heavy",
    inputs: { x: { dtype: "float32", shape: [1, 3, 64, 64], data: b64(x) } },
  });
  let view = r.json;
  while (view.status === "queued" || view.status === "active")
    view = (await vf.fleet.request("GET", `/v1/jobs/${view.id}?wait=10000`)).json;
  expect(view.status, JSON.stringify(view)).toBe("completed");
}

/** JSON log lines with this msg. */
function logLines(msg: string): Record<string, unknown>[] {
  return vf.fleet.logs.lines
    .flatMap((chunk) => chunk.split("\n"))
    .filter((l) => l.includes(`"msg":"${msg}"`))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe("cold-start phases", () => {
  it("a model load reports fetch, key (Vault unwrap), decrypt, session and first run, adding up to the load", async () => {
    const unwrapsBefore = unwrapCalls(vf.vault);
    await runOne(1);
    await runOne(2);
    expect(unwrapCalls(vf.vault)).toBeGreaterThan(unwrapsBefore);

    const loaded = logLines("model loaded").filter((l) => l.model === "heavy");
    expect(loaded).toHaveLength(1);
    const line = loaded[0] as { loadMs: number; phaseMs: Record<string, number> };
    expect(Object.keys(line.phaseMs).sort()).toEqual(["decrypt", "fetch", "key", "session"]);
    for (const ms of Object.values(line.phaseMs)) expect(ms).toBeGreaterThan(0);
    const sum = Object.values(line.phaseMs).reduce((a, b) => a + b, 0);
    // Each figure is rounded to 0.01 ms: allow that much per phase.
    expect(sum).toBeLessThanOrEqual(line.loadMs + 0.05);

    // The first run is reported once per loaded session, not for the second job.
    const first = logLines("model first run").filter((l) => l.model === "heavy");
    expect(first).toHaveLength(1);
    expect(first[0]?.firstRunMs).toBeGreaterThan(0);

    const text = await (await fetch(`${vf.fleet.workers[0]?.metricsUrl}/metrics`)).text();
    const m = parseColdMetrics(text, "heavy");
    for (const phase of ["fetch", "key", "decrypt", "session", "first_run"] as const) {
      expect(m.phases[phase], phase).toBeGreaterThan(0);
      expect(m.counts[phase], phase).toBe(1);
    }
    expect(m.phases.key * 1000).toBeCloseTo(line.phaseMs.key as number, 1);
    // An in-process worker (no main.ts) reports when it was ready, not a "main" stage.
    expect(m.stages.ready).toBeGreaterThan(0);
    expect(m.stages.main).toBeUndefined();
  });

  it("a worker process reports its start: process start time, main (modules loaded) before ready", async () => {
    const metricsPort = await freePort();
    const spawnedAt = performance.timeOrigin + performance.now();
    const w = await startProcess(
      "worker",
      "cold-start-test",
      {
        ...vf.fleet.env,
        WORKER_ID: "cold-start-test",
        METRICS_HOST: "127.0.0.1",
        METRICS_PORT: String(metricsPort),
        WORKER_MODELS: "heavy",
      },
      path.join(vf.fleet.dir, "logs"),
      `http://127.0.0.1:${metricsPort}/readyz`,
    );
    try {
      const m = parseColdMetrics(await (await fetch(`${w.url}/metrics`)).text(), "heavy");
      expect(m.startTime).toBeDefined();
      // The process began after we spawned it (same clock; 50 ms for clock granularity).
      expect((m.startTime as number) * 1000).toBeGreaterThanOrEqual(spawnedAt - 50);
      expect(m.stages.main).toBeGreaterThan(0);
      expect(m.stages.ready).toBeGreaterThan(m.stages.main as number);
    } finally {
      await w.stop();
    }
  });
});
