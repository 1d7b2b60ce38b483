import { randomBytes } from "node:crypto";
import type { AuditEvent, AuditFields } from "@citadel/audit";
import type { JobData, ManifestBody } from "@citadel/contracts";
import {
  bullConnection,
  keys,
  parseOutboxEntry,
  queueName,
  queuePrefix,
  type RedisConn,
  redisClient,
} from "@citadel/queue";
import type { RunResult } from "@citadel/runtime";
import { createLogger, createRegistry } from "@citadel/telemetry";
import type { Tensor } from "@citadel/tensors";
import { Queue } from "bullmq";
import { afterAll, describe, expect, it, vi } from "vitest";
import { ModelConsumer } from "./consumer.js";
import { JobLease } from "./lease.js";
import { workerMetrics } from "./metrics.js";
import type { LoadedModel } from "./model-host.js";

const url = process.env.CITADEL_TEST_REDIS_URL;
if (!url) throw new Error("CITADEL_TEST_REDIS_URL is not set: run through vitest's unit project");

const manifest = {
  name: "m",
  version: "1",
  inputs: [{ name: "x", dtype: "float32", shape: [null, 2], batchAxis: 0 }],
  outputs: [{ name: "y", dtype: "float32", shape: [null, 2], batchAxis: 0 }],
  maxBatch: 4,
  maxQueueDelayMs: 0,
  timeoutMs: 5000,
  outputPolicy: {},
  artifact: { plaintextSha256: "0".repeat(64) },
} as unknown as ManifestBody;

// A stand-in for a loaded model (y = x): this test is about the consumer's Redis
// handling; the e2e suites run real models.
const loaded = {
  manifest,
  info: { provider: "cpu", inputs: [], outputs: [], attempts: [] },
  runner: {
    alive: true,
    run: async (feeds: Record<string, Tensor>): Promise<RunResult> => ({ outputs: { y: feeds.x as Tensor }, ms: 1 }),
  },
} as unknown as LoadedModel;

const clients: RedisConn[] = [];
afterAll(async () => {
  for (const c of clients) c.disconnect();
});

/** A consumer of queue "m" as the worker builds one, with this test's parts. */
function testConsumer(o: {
  connection: RedisConn;
  prefix: string;
  model: LoadedModel;
  audit?: [AuditEvent, AuditFields][];
  /** Its metrics registry's and its (silent) logger's name. */
  name: string;
}): ModelConsumer {
  return new ModelConsumer({
    model: "m",
    connection: o.connection,
    prefix: o.prefix,
    host: { get: async () => o.model, pin: () => () => {} },
    audit: { record: (e, f) => o.audit?.push([e, f]) },
    metrics: workerMetrics(createRegistry(o.name)),
    log: createLogger({ name: o.name, level: "silent" }),
    workerId: "w-test",
    lockDurationMs: 5000,
    maxResultBytes: 1 << 20,
    circuit: { failureThreshold: 5, cooldownMs: 1000 },
    maxInFlight: 2,
  });
}

/** A one-sample job of tenant t for queue "m" (x: float32 [1, 2]). */
function jobData(): JobData {
  return {
    tenant: "t",
    model: "m",
    version: "1",
    inputs: [{ name: "x", dtype: "float32", shape: [1, 2] }],
    batch: 1,
    inputBytes: 8,
    timeoutMs: 5000,
    acceptedAt: Date.now(),
    deadline: Date.now() + 60_000,
    requestId: "r",
  };
}

/** Queue "m" under a fresh prefix on the test Redis, with BullMQ's connection and an ordinary client. */
function testQueue() {
  const prefix = `{t-consumer-${randomBytes(4).toString("hex")}}`;
  const connection = bullConnection(url as string, () => undefined);
  const redis = redisClient(url as string, () => undefined);
  clients.push(connection, redis);
  const queue = new Queue<JobData>(queueName("m"), { connection, prefix: queuePrefix(prefix, "m") });
  return {
    prefix,
    connection,
    redis,
    queue,
    /** Enqueues a job as the API does: its input bytes (x = [1, 2]) beside it. */
    add: async (id: string) => {
      await connection.set(keys.inputs(prefix, "m", id), Buffer.from(Float32Array.of(1, 2).buffer));
      await queue.add("infer", jobData(), { jobId: id });
    },
    /** Stops the consumer and removes the queue. */
    close: async (consumer: ModelConsumer) => {
      await consumer.close(1000);
      await queue.obliterate({ force: true });
      await queue.close();
    },
  };
}

describe("the consumer and cancellations whose message it never got", () => {
  it("settles a job cancelled during its run as cancelled, its result dropped, when the message was lost", async () => {
    const { prefix, connection, queue, add, close } = testQueue();
    const id = "m.consumer-cancel-0003";
    // The API's DELETE during the run, whose pub/sub message reaches no worker: only the flag is set.
    const cancelling = {
      ...loaded,
      runner: {
        alive: true,
        run: async (feeds: Record<string, Tensor>): Promise<RunResult> => {
          await connection.set(keys.cancelRequested(prefix, id), "1");
          return { outputs: { y: feeds.x as Tensor }, ms: 1 };
        },
      },
    } as unknown as LoadedModel;
    const audit: [AuditEvent, AuditFields][] = [];
    const consumer = testConsumer({
      connection,
      prefix,
      model: cancelling,
      audit,
      name: "consumer-cancel-run-test",
    });
    await add(id);
    consumer.start();
    try {
      let state = "";
      for (let i = 0; i < 500 && state !== "failed" && state !== "completed"; i++) {
        state = await queue.getJobState(id);
        if (state !== "failed" && state !== "completed") await new Promise((r) => setTimeout(r, 20));
      }
      expect(state).toBe("failed");
      const job = await queue.getJob(id);
      expect(job?.failedReason).toMatch(/^CANCELLED: /);
      expect(job?.returnvalue ?? null).toBeNull();
      // Its outbox entry says cancelled (the API's view and the tenant's quota follow it), its inputs are gone.
      const entries = await connection.xrange(keys.outbox(prefix, "m"), "-", "+");
      expect(entries.map(([, f]) => parseOutboxEntry(f))).toEqual([
        expect.objectContaining({ id, tenant: "t", status: "cancelled" }),
      ]);
      expect(await connection.exists(keys.inputs(prefix, "m", id))).toBe(0);
      for (let i = 0; i < 100 && audit.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(audit.map(([e, f]) => [e, f.jobId, f.errorCode])).toEqual([["job.cancelled", id, "CANCELLED"]]);
    } finally {
      await close(consumer);
    }
  });

  it("settles a job flagged before it was fetched as cancelled, without running it", async () => {
    const { prefix, connection, redis, queue, add, close } = testQueue();
    /** Samples of each run. */
    const runs: number[] = [];
    const counting = {
      ...loaded,
      runner: {
        alive: true,
        run: async (feeds: Record<string, Tensor>): Promise<RunResult> => {
          runs.push((feeds.x as Tensor).shape[0] as number);
          return { outputs: { y: feeds.x as Tensor }, ms: 1 };
        },
      },
    } as unknown as LoadedModel;
    const audit: [AuditEvent, AuditFields][] = [];
    const consumer = testConsumer({
      connection,
      prefix,
      model: counting,
      audit,
      name: "consumer-cancel-test",
    });
    const [cancelled, kept] = ["m.consumer-cancel-0001", "m.consumer-cancel-0002"];
    for (const id of [cancelled, kept]) await add(id);
    // As the API's DELETE of an active job leaves it when its message reaches no worker.
    await redis.set(keys.cancelRequested(prefix, cancelled), "1");
    consumer.start();
    try {
      const states = async () => Promise.all([cancelled, kept].map((id) => queue.getJobState(id)));
      for (let i = 0; i < 500 && (await states()).some((st) => st !== "failed" && st !== "completed"); i++)
        await new Promise((r) => setTimeout(r, 20));
      expect(await states()).toEqual(["failed", "completed"]);
      expect((await queue.getJob(cancelled))?.failedReason).toMatch(/CANCELLED/);
      // One run, of the other job's one sample: the flagged job's input never reached it.
      expect(runs).toEqual([1]);
      expect(audit.map(([e, f]) => [e, f.jobId])).toEqual(
        expect.arrayContaining([
          ["job.cancelled", cancelled],
          ["job.completed", kept],
        ]),
      );
    } finally {
      await close(consumer);
    }
  });
});

describe("the consumer when its blocking fetch never answers", () => {
  // Seen on a Redis Cluster failover (test/reliability/failover.ts): BullMQ's blocking
  // read stayed pending for good, and a consumer that had found the queue drained
  // waited on it while jobs piled up in `wait`.
  it("polls for jobs instead of waiting on it for good", async () => {
    const { prefix, connection, queue, add, close } = testQueue();
    const stuck = vi.spyOn(JobLease.prototype, "next").mockReturnValue(new Promise(() => {}));
    const consumer = testConsumer({
      connection,
      prefix,
      model: loaded,
      name: "consumer-stuck-test",
    });
    const id = "m.consumer-stuck-job-00001";
    consumer.start();
    try {
      // The queue is empty: the consumer finds it drained and turns to the (stuck) blocking
      // fetch. Generous deadlines: a loaded machine may take seconds to get there.
      const turnedTo = Date.now() + 30_000;
      while (stuck.mock.calls.length === 0 && Date.now() < turnedTo) await new Promise((r) => setTimeout(r, 20));
      expect(stuck).toHaveBeenCalled();
      await add(id);
      let state = "";
      const ran = Date.now() + 30_000;
      for (;;) {
        state = await queue.getJobState(id);
        if (state === "completed" || Date.now() > ran) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(state).toBe("completed");
    } finally {
      stuck.mockRestore();
      await close(consumer);
    }
  }, 90_000);
});

describe("the consumer while a batch settles", () => {
  it("hands the runner the next batches without waiting for the last one's settle", async () => {
    const { prefix, connection, queue, add, close } = testQueue();
    const one = { ...manifest, maxBatch: 1 } as ManifestBody;
    let runs = 0;
    const counting = {
      ...loaded,
      manifest: one,
      runner: {
        alive: true,
        run: async (feeds: Record<string, Tensor>): Promise<RunResult> => {
          runs++;
          return { outputs: { y: feeds.x as Tensor }, ms: 1 };
        },
      },
    } as unknown as LoadedModel;
    // Every settle waits until the test lets it through, as on a slow Redis.
    let release = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const complete = JobLease.prototype.complete;
    const slow = vi.spyOn(JobLease.prototype, "complete").mockImplementation(async function (this: JobLease, ...a) {
      await gate;
      return complete.apply(this, a);
    });
    const consumer = testConsumer({
      connection,
      prefix,
      model: counting,
      name: "consumer-settle-test",
    });
    const ids = [1, 2, 3].map((i) => `m.consumer-settle-000${i}`);
    for (const id of ids) await add(id);
    consumer.start();
    try {
      // Three batches of one job: all three ran while none could settle (two runs in the
      // runner at most, and as many again settling).
      for (let i = 0; i < 500 && runs < 3; i++) await new Promise((r) => setTimeout(r, 20));
      expect(runs).toBe(3);
      expect(slow).toHaveBeenCalledTimes(3);
      expect(await Promise.all(ids.map((id) => queue.getJobState(id)))).toEqual(["active", "active", "active"]);
      release();
      const states = async () => Promise.all(ids.map((id) => queue.getJobState(id)));
      for (let i = 0; i < 500 && (await states()).some((st) => st !== "completed"); i++)
        await new Promise((r) => setTimeout(r, 20));
      expect(await states()).toEqual(["completed", "completed", "completed"]);
    } finally {
      release();
      slow.mockRestore();
      await close(consumer);
    }
  });
});

describe("the consumer over many turns", () => {
  it("races no promise on every turn (each race leaves a reaction on a pending promise until it settles)", async () => {
    const { prefix, connection, queue, add, close } = testQueue();
    // How many races each promise was in: one raced on every turn (a promise that
    // settles on stop) would hold a reaction per turn for the worker's life.
    const raced = new Map<Promise<unknown>, number>();
    const race = Promise.race.bind(Promise);
    const spy = vi.spyOn(Promise, "race").mockImplementation(((values: readonly unknown[]) => {
      for (const v of values) if (v instanceof Promise) raced.set(v, (raced.get(v) ?? 0) + 1);
      return race(values);
    }) as typeof Promise.race);
    const consumer = testConsumer({
      connection,
      prefix,
      model: loaded,
      name: "consumer-turns-test",
    });
    consumer.start();
    try {
      // One job at a time, each taken, run and settled on turns of its own.
      for (let i = 0; i < 60; i++) {
        const id = `m.consumer-turns-${String(i).padStart(4, "0")}`;
        await add(id);
        // A generous bound: a loaded machine may take seconds over one job.
        const by = Date.now() + 30_000;
        while ((await queue.getJobState(id)) !== "completed" && Date.now() < by)
          await new Promise((r) => setTimeout(r, 5));
        expect(await queue.getJobState(id)).toBe("completed");
      }
      expect(raced.size).toBeGreaterThan(0);
      expect(Math.max(...raced.values())).toBeLessThan(20);
    } finally {
      spy.mockRestore();
      await close(consumer);
    }
  });
});
