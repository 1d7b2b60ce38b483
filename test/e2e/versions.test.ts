import { randomBytes } from "node:crypto";
import { signRetirement, verifyRetirement } from "@citadel/artifacts";
import { buildConvNet } from "@citadel/onnx";
import { JobQueues } from "@citadel/queue";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { convInput, enqueueDirect, pollUntil, queueCounts, readAudit } from "../support/api-kit.js";
import { runCli } from "../support/child.js";
import { type Loose, redisUrl, startTestFleet, type TestFleet } from "../support/fleet.js";

// Only routed versions (stable, canary) are served: an old version published before a
// policy was tightened cannot be asked for by number, loaded by a worker from a job
// injected into Redis, or routed again once retired.

let fleet: TestFleet;
let queues: JobQueues;
const x = convInput;

beforeAll(async () => {
  fleet = await startTestFleet({ workers: 1 });
  queues = new JobQueues(
    new Redis(redisUrl(), { maxRetriesPerRequest: null }),
    () => new Redis(redisUrl(), { maxRetriesPerRequest: null }),
    fleet.redis,
    { prefix: fleet.prefix, resultTtlMs: 60_000, failedTtlMs: 60_000, attempts: 3, backoffMs: 10 },
  );
});
afterAll(async () => {
  await queues?.close();
  await fleet?.close();
});

/** The CLI, run asynchronously: the fleet's API and worker live in this process, and spawnSync would stall them. */
async function citadel(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await runCli(args, { env: { PATH: process.env.PATH ?? "", ...fleet.env } });
  return { code: r.code ?? -1, out: r.out, err: r.err };
}

/** Publishes two versions: 1 with full outputs, then 2 (label only) as the stable one. */
async function twoVersions(name: string): Promise<void> {
  await fleet.publish(buildConvNet({ seed: 1 }), { name, version: "1", spec: {} });
  await fleet.publish(
    buildConvNet({ seed: 2 }),
    { name, version: "2", spec: { outputPolicy: { labelOnly: true } } },
    { stable: true },
  );
}

async function finalView(id: string): Promise<Loose> {
  return pollUntil(
    `job ${id} to finish`,
    async () => {
      const r = await fleet.request("GET", `/v1/jobs/${id}?wait=5000`);
      return r.json.status !== "queued" && r.json.status !== "active" ? r.json : undefined;
    },
    60_000,
  );
}

async function modelEvents(event: string, model: string, version: string) {
  return (await readAudit(fleet)).filter((r) => r.event === event && r.model === model && r.version === version);
}

describe("only routed versions are served", () => {
  it("the API refuses a job naming an unrouted version, without saying which versions exist; nothing is enqueued", async () => {
    await twoVersions("old");
    const before = await queueCounts(fleet, "old");
    const one = await fleet.request("POST", "/v1/jobs", { model: "old", version: "1", inputs: x() });
    expect(one.status, JSON.stringify(one.json)).toBe(404);
    expect(one.json.error.code).toBe("MODEL_NOT_FOUND");
    expect(one.json.error.message).not.toMatch(/\b2\b/);
    const bulk = await fleet.request("POST", "/v1/jobs/bulk", { jobs: [{ model: "old", version: "1", inputs: x() }] });
    expect(bulk.json.jobs[0]).toMatchObject({ status: 404, error: { code: "MODEL_NOT_FOUND" } });
    expect((await queueCounts(fleet, "old")).total).toBe(before.total);
    expect((await readAudit(fleet)).some((r) => r.event === "job.accepted" && r.model === "old")).toBe(false);
    // The routed version is served, with its policy.
    const two = await fleet.request("POST", "/v1/jobs", { model: "old", version: "2", inputs: x() });
    expect(two.status).toBe(202);
    const done = await finalView(two.json.id);
    expect(done.status).toBe("completed");
    expect(done.result.outputs.probs.dtype).toBe("int32");
  });

  it("a worker fails a job injected into Redis for an unrouted version without loading it", async () => {
    await twoVersions("injected");
    const view = await finalView(await enqueueDirect(queues, "injected", "1", "versions-test"));
    expect([view.status, view.error?.code]).toEqual(["failed", "MODEL_NOT_FOUND"]);
    expect(await modelEvents("model.loaded", "injected", "1")).toEqual([]);
    expect((await modelEvents("model.rejected", "injected", "1"))[0]).toMatchObject({ errorCode: "MODEL_NOT_FOUND" });
  });
});

describe("citadel retire", () => {
  it("refuses the stable version; retires another with a signed, audited statement; a retired version is never routed again", async () => {
    await fleet.publish(buildConvNet({ seed: 1 }), { name: "ret", version: "1", spec: {} });
    await fleet.publish(buildConvNet({ seed: 2 }), { name: "ret", version: "2", spec: {} }, { canaryWeight: 0.5 });
    const stable = await citadel("retire", "ret", "1");
    expect(stable.code).toBe(1);
    expect(stable.err).toMatch(/VERSION_IS_STABLE: ret@1 is the stable version; make another version stable first/);
    expect((await citadel("route", "ret", "--stable", "2")).code).toBe(0);
    const retired = await citadel("retire", "ret", "1", "--reason", "published before the output policy was tightened");
    expect(retired.code, retired.err).toBe(0);
    expect(retired.out).toMatch(/retired ret@1/);
    // The statement in Redis is signed by the pinned signer and names the version.
    const stored = await fleet.ctx.registry.getRetirement("ret", "1");
    expect(verifyRetirement(stored, await fleet.ctx.trusted(), { name: "ret", version: "1" }).reason).toBe(
      "published before the output policy was tightened",
    );
    const rec = await pollUntil("the model.retired audit record", async () =>
      (await modelEvents("model.retired", "ret", "1")).at(0),
    );
    expect(rec.detail).toBe("published before the output policy was tightened");
    // Retiring the canary takes it out of routing in the same step.
    await fleet.publish(buildConvNet({ seed: 3 }), { name: "ret", version: "3", spec: {} }, { canaryWeight: 0.5 });
    expect((await citadel("retire", "ret", "3")).code).toBe(0);
    expect(await fleet.ctx.registry.getRouting("ret")).toEqual({ stable: "2", canaryWeight: 0 });
    // Routing it again, by route or by publish, is refused.
    const again = await citadel("route", "ret", "--stable", "1");
    expect([again.code, again.err]).toEqual([1, expect.stringMatching(/MODEL_RETIRED: ret@1 is retired/)]);
    const canary = await citadel("route", "ret", "--stable", "2", "--canary", "1", "--weight", "0.5");
    expect(canary.err).toMatch(/MODEL_RETIRED/);
    await expect(fleet.publish(buildConvNet({ seed: 1 }), { name: "ret", version: "1", spec: {} })).rejects.toThrow(
      /ret@1 is retired/,
    );
    // A Redis writer puts it back as the stable version: the API and the worker still refuse it.
    await fleet.redis.hset(`${fleet.prefix}:registry:routing`, "ret", JSON.stringify({ stable: "1", canaryWeight: 0 }));
    await fleet.redis.publish(`${fleet.prefix}:registry:changed`, JSON.stringify({ name: "ret" }));
    await pollUntil("the API to stop listing ret", async () => {
      const r = await fleet.request("GET", "/v1/models");
      return !(r.json.models as { name: string }[]).some((m) => m.name === "ret");
    });
    for (const version of ["1", undefined]) {
      const sub = await fleet.request("POST", "/v1/jobs", { model: "ret", version, inputs: x() });
      expect([sub.status, sub.json.error?.code]).toEqual([404, "MODEL_NOT_FOUND"]);
    }
    const view = await finalView(await enqueueDirect(queues, "ret", "1", "versions-test"));
    expect([view.status, view.error?.code]).toEqual(["failed", "MODEL_NOT_FOUND"]);
    expect(await modelEvents("model.loaded", "ret", "1")).toEqual([]);
  });

  it("a loaded version is unloaded once retired, even when a Redis writer routes it again in the same breath", async () => {
    await fleet.publish(buildConvNet({ seed: 6 }), { name: "live", version: "1", spec: {} });
    await fleet.publish(buildConvNet({ seed: 7 }), { name: "live", version: "2", spec: {} }, { canaryWeight: 0.5 });
    const first = await fleet.request("POST", "/v1/jobs", { model: "live", version: "2", inputs: x() });
    expect((await finalView(first.json.id)).status).toBe("completed");
    expect(await modelEvents("model.loaded", "live", "2")).toHaveLength(1);
    // A valid retirement lands, and a Redis writer keeps the version routed: one event for both.
    const signed = await signRetirement(
      { schema: "citadel.retirement/v1", name: "live", version: "2", retiredAt: new Date().toISOString() },
      await fleet.ctx.keys(),
    );
    await fleet.redis.hset(`${fleet.prefix}:registry:retired:live`, "2", JSON.stringify(signed));
    await fleet.redis.publish(`${fleet.prefix}:registry:changed`, JSON.stringify({ name: "live" }));
    await pollUntil("the worker to unload live@2", async () =>
      (await modelEvents("model.unloaded", "live", "2")).at(0),
    );
    const view = await finalView(await enqueueDirect(queues, "live", "2", "versions-test"));
    expect([view.status, view.error?.code]).toEqual(["failed", "MODEL_NOT_FOUND"]);
    expect(await modelEvents("model.loaded", "live", "2")).toHaveLength(1);
  });

  it("ignores a forged retirement, with a warning: it cannot deny service", async () => {
    await fleet.publish(buildConvNet({ seed: 5 }), { name: "forged", version: "1", spec: {} });
    const statement = {
      schema: "citadel.retirement/v1",
      name: "forged",
      version: "1",
      retiredAt: new Date().toISOString(),
    };
    await fleet.redis.hset(
      `${fleet.prefix}:registry:retired:forged`,
      "1",
      JSON.stringify({
        retirement: statement,
        signature: { alg: "ed25519", keyId: "local:0000000000000000", value: randomBytes(64).toString("base64") },
      }),
    );
    await fleet.redis.publish(`${fleet.prefix}:registry:changed`, JSON.stringify({ name: "forged" }));
    const sub = await fleet.request("POST", "/v1/jobs", { model: "forged", version: "1", inputs: x() });
    expect(sub.status, JSON.stringify(sub.json)).toBe(202);
    expect((await finalView(sub.json.id)).status).toBe("completed");
    const route = await citadel("route", "forged", "--stable", "1");
    expect(route.code, route.err).toBe(0);
    expect(route.err).toMatch(/ignoring a retirement of forged@1 that does not verify \(SIGNER_UNTRUSTED\)/);
    await pollUntil(
      "the API's and the worker's warnings",
      async () =>
        fleet.logs.lines.some(
          (l) => l.includes('"ignoring a retirement that does not verify"') && l.includes("citadel-worker"),
        ) &&
        fleet.logs.lines.some(
          (l) => l.includes('"ignoring a retirement that does not verify"') && l.includes("citadel-api"),
        ),
    );
  });
});
