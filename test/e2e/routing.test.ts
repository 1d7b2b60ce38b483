import { readAuditEntries } from "@citadel/audit";
import { buildConvNet } from "@citadel/onnx";
import { keys } from "@citadel/queue";
import { loadableProviders } from "@citadel/runtime";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pollUntil } from "../support/api-kit.js";
import { b64, decodeF32, startTestFleet, type TestFleet } from "../support/fleet.js";

let fleet: TestFleet;
const x = {
  x: { dtype: "float32", shape: [2, 3, 32, 32], data: b64(Float32Array.from({ length: 6144 }, (_, i) => Math.sin(i))) },
};

// The providers this host can load the conv net with: ["cpu"] on a CPU-only machine, a GPU
// node adds cuda (and tensorrt). Provider expectations follow the host, not a fixed list.
let host: string[] = [];
beforeAll(async () => {
  host = await loadableProviders(buildConvNet());
  fleet = await startTestFleet({ workers: 1 });
});
afterAll(async () => {
  await fleet?.close();
});

async function run(model: string, headers: Record<string, string> = {}) {
  const sub = await fleet.request("POST", "/v1/jobs", { model, inputs: x }, headers);
  expect(sub.status, JSON.stringify(sub.json)).toBe(202);
  const r = await fleet.request("GET", `/v1/jobs/${sub.json.id}?wait=20000`, undefined, headers);
  expect(r.json.status, JSON.stringify(r.json)).toBe("completed");
  return r.json;
}

async function audit(event: string, model: string) {
  const entries = await readAuditEntries(fleet.redis, fleet.prefix);
  return entries
    .map((e) => e.rec as { event?: string; model?: string; version?: string })
    .filter((e) => e.event === event && e.model === model);
}

describe("models at run time", () => {
  it("a new version and canary weights reach running workers without a restart; the old session is released", async () => {
    await fleet.publish(buildConvNet({ seed: 1 }), { name: "m", version: "1", spec: {} });
    expect((await run("m")).version).toBe("1");
    await fleet.publish(buildConvNet({ seed: 2 }), { name: "m", version: "2", spec: {} }, { canaryWeight: 1 });
    for (let i = 0; i < 50; i++) {
      const v = (await run("m")).version;
      if (v === "2") break;
      expect(i).toBeLessThan(49);
    }
    // Pinning a version still works while a canary takes the traffic.
    const pinned = await fleet.request("POST", "/v1/jobs", { model: "m", version: "1", inputs: x });
    expect(pinned.json.version).toBe("1");
    await fleet.ctx.registry.setRouting("m", { stable: "2", canaryWeight: 0 });
    // The worker releases version 1 once it sees the routing change (generous deadline: a loaded machine).
    const unloaded = await pollUntil(
      "version 1's model.unloaded audit record",
      async () => {
        const versions = (await audit("model.unloaded", "m")).map((e) => e.version);
        return versions.includes("1") ? versions : undefined;
      },
      30_000,
      50,
    );
    expect(unloaded).toContain("1");
    // Each version was loaded once by this worker (memory per model held once).
    const loads = (await audit("model.loaded", "m")).map((e) => e.version);
    expect(loads.filter((v) => v === "2")).toHaveLength(1);
  });

  it("applies the output policy before results are stored: top-k, rounding, label only per tenant", async () => {
    await fleet.publish(buildConvNet({ seed: 3 }), {
      name: "guarded",
      version: "1",
      spec: { outputPolicy: { topK: 3, decimals: 2 } },
    });
    const r = await run("guarded");
    const probs = r.result.outputs.probs;
    expect(probs.shape).toEqual([2, 3]);
    for (const v of decodeF32(probs.data)) expect(Math.abs(v * 100 - Math.round(v * 100))).toBeLessThan(1e-4);
    expect(r.result.outputs["probs.indices"].shape).toEqual([2, 3]);
    // Stored in Redis already reduced: the full logits never reach the result.
    const job = await fleet.redis.hget(keys.job(fleet.prefix, "guarded", r.id), "returnvalue");
    expect(JSON.parse(job ?? "{}").outputs.probs.shape).toEqual([2, 3]);
    const key = await fleet.addTenant({
      id: "label-only",
      models: ["guarded"],
      outputPolicy: { guarded: { labelOnly: true } },
    });
    const l = await run("guarded", { authorization: `Bearer ${key}` });
    expect(Object.keys(l.result.outputs)).toEqual(["probs"]);
    expect(l.result.outputs.probs.shape).toEqual([2]);
    expect(l.result.outputs.probs.dtype).toBe("int32");
    // What a tenant is told about the outputs is what its jobs get: /v2 metadata shapes them
    // under the policy, and /v1/models shows the policy applied (the stricter setting wins).
    const meta = await fleet.request("GET", "/v2/models/guarded", undefined, { authorization: `Bearer ${key}` });
    expect(meta.json.outputs).toEqual([{ name: "probs", datatype: "INT32", shape: [-1] }]);
    const looser = await fleet.addTenant({ id: "top-5", models: ["guarded"], outputPolicy: { guarded: { topK: 5 } } });
    const models = await fleet.request("GET", "/v1/models", undefined, { authorization: `Bearer ${looser}` });
    const guarded = (models.json.models as { name: string; versions: { outputPolicy: unknown }[] }[]).find(
      (m) => m.name === "guarded",
    );
    expect(guarded?.versions[0]?.outputPolicy).toEqual({ topK: 3, decimals: 2 });
    const t = await run("guarded", { authorization: `Bearer ${looser}` });
    expect(t.result.outputs.probs.shape).toEqual([2, 3]);
  });

  it("reports the execution provider in the result, metrics and audit", async () => {
    await fleet.publish(buildConvNet({ seed: 4 }), {
      name: "p",
      version: "1",
      spec: { executionProviders: ["tensorrt", "cuda", "cpu"] },
    });
    const want = host[0];
    expect((await run("p")).result.provider).toBe(want);
    const text = await (await fetch(`${fleet.workers[0]?.metricsUrl}/metrics`)).text();
    expect(text).toMatch(new RegExp(`citadel_execution_provider_info\\{[^}]*model="p"[^}]*provider="${want}"`));
    expect((await audit("model.loaded", "p"))[0]).toMatchObject({ provider: want });
  });

  it("under REQUIRE_GPU serves on a GPU provider, or fails loudly without one (never falls back)", async () => {
    const w = await fleet.startWorker({ REQUIRE_GPU: "true", WORKER_MODELS: "gpu-only" });
    await fleet.publish(buildConvNet({ seed: 5 }), {
      name: "gpu-only",
      version: "1",
      spec: { executionProviders: ["tensorrt", "cuda", "cpu"] },
    });
    const sub = await fleet.request("POST", "/v1/jobs", { model: "gpu-only", inputs: x });
    const r = await fleet.request("GET", `/v1/jobs/${sub.json.id}?wait=20000`);
    const gpu = host.find((p) => p !== "cpu");
    if (gpu) {
      expect([r.json.status, r.json.result?.provider]).toEqual(["completed", gpu]);
      await w.close();
      return;
    }
    expect([r.json.status, r.json.error?.code]).toEqual(["failed", "PROVIDER_UNAVAILABLE"]);
    // The tenant gets the code and a fixed message; why each provider failed is for the operator's log.
    expect(r.json.error.message).toBe("no execution provider could load the model");
    expect(fleet.logs.text).toMatch(/tensorrt.*cuda/);
    await w.close();
  });
});
