import { buildIdentityModel } from "@citadel/onnx";
import { JobQueues } from "@citadel/queue";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { pollUntil, publishModel } from "../support/api-kit.js";
import { redisUrl, startTestFleet, type TestFleet } from "../support/fleet.js";

// A waiter builds a completed job's view from its completion event (the result carries
// the job's times), so submit-and-wait reads nothing back. These check the edges of
// that: a job that finished before anyone listened, and one whose event came before
// its waiter.

let fleet: TestFleet;
let queues: JobQueues;
const TENANT = "acme";

beforeAll(async () => {
  fleet = await startTestFleet({ workers: 1 });
  await publishModel(fleet, buildIdentityModel("float32", ["N", 4]), {
    name: "tiny",
    version: "1",
    spec: { maxBatch: 8, maxQueueDelayMs: 2, inputs: { x: { range: [-10, 10] } } },
  });
  queues = new JobQueues(
    new Redis(redisUrl(), { maxRetriesPerRequest: null }),
    () => new Redis(redisUrl(), { maxRetriesPerRequest: null }),
    fleet.redis,
    { prefix: fleet.prefix, resultTtlMs: 60_000, failedTtlMs: 60_000, attempts: 1, backoffMs: 10 },
    () => true,
    // No warm-up: a waiter relies on the events alone (and on the ids whose event came first).
    0,
  );
});
afterAll(async () => {
  await queues?.close();
  await fleet?.close();
});

const job = { model: "tiny", inputs: { x: { dtype: "float32", shape: [1, 4], data: [1, 2, 3, 4] } } };

async function completedViaApi(id: string): Promise<Record<string, unknown>> {
  return pollUntil(
    `job ${id} to complete`,
    async () => {
      const r = await fleet.request("GET", `/v1/jobs/${id}?wait=5000`);
      return r.json.status === "completed" ? (r.json as Record<string, unknown>) : undefined;
    },
    30_000,
  );
}

describe("waiting for a job from its completion event", () => {
  it("answers a waiter whose job's event came before it at once, with the job's own view", async () => {
    // Start this process's listener on the model (a first wait that times out at once).
    const warm = await fleet.request("POST", "/v1/jobs", job);
    await queues.waitForFinish(warm.json.id, TENANT, 1, { submitted: { version: "1" } });
    await completedViaApi(warm.json.id);

    const sub = await fleet.request("POST", "/v1/jobs", job);
    expect(sub.status).toBe(202);
    const want = await completedViaApi(sub.json.id);
    // The listener reads the model's events in order: once it has delivered a later job's
    // completion, it has seen this one's (with no waiter then, it kept the id).
    const later = await fleet.request("POST", "/v1/jobs", job);
    await completedViaApi(later.json.id);
    const m = performance.now();
    const marker = await queues.waitForFinish(later.json.id, TENANT, 60_000, { submitted: { version: "1" } });
    expect(marker.status).toBe("completed");
    expect(performance.now() - m).toBeLessThan(30_000);
    const read = vi.spyOn(queues, "view");
    try {
      const t = performance.now();
      const view = await queues.waitForFinish(sub.json.id, TENANT, 60_000, { submitted: { version: "1" } });
      // Answered from the job itself, not at the end of the 60 s wait...
      expect(performance.now() - t).toBeLessThan(30_000);
      expect(view).toEqual(want);
      // ...read back because its event came first (a waiter answered by an event reads nothing).
      expect(read).toHaveBeenCalledWith(sub.json.id, TENANT);
    } finally {
      read.mockRestore();
    }
  });

  it("builds the same view from the event as a read of the job gives", async () => {
    const sub = await fleet.request("POST", "/v1/jobs", job);
    const view = await queues.waitForFinish(sub.json.id, TENANT, 30_000, { submitted: { version: "1" } });
    expect(view.status).toBe("completed");
    expect(view).toEqual(await queues.view(sub.json.id, TENANT));
    expect(view.result?.outputs.y?.shape).toEqual([1, 4]);
    // Internal fields never reach the view.
    expect(Object.keys(view.result ?? {})).not.toContain("at");
    expect(Object.keys(view.result ?? {})).not.toContain("workerId");
  });

  it("still finds a job another tenant owns not found", async () => {
    const sub = await fleet.request("POST", "/v1/jobs", job);
    await completedViaApi(sub.json.id);
    await expect(queues.waitForFinish(sub.json.id, "someone-else", 1000)).rejects.toMatchObject({
      code: "JOB_NOT_FOUND",
    });
  });
});
