import { randomBytes } from "node:crypto";
import type { JobData } from "@citadel/contracts";
import { Redis, type RedisOptions } from "ioredis";
import { afterAll, describe, expect, inject, it } from "vitest";
import { type EnqueueItem, JobQueues } from "./jobs.js";
import { keys, queueName, queuePrefix } from "./names.js";

// JobQueues against the real Redis the run shares, under this file's own prefix.

const clients: Redis[] = [];
const client = (url: string, opts: RedisOptions = {}) => {
  const c = new Redis(url, { maxRetriesPerRequest: null, ...opts });
  c.on("error", () => undefined);
  clients.push(c);
  return c;
};
afterAll(() => {
  for (const c of clients) c.disconnect();
});

/** JobQueues on the shared Redis under a fresh prefix; `blocking` makes its listener connections. */
function queuesOn(url: string, blocking: () => Redis = () => client(url)) {
  return new JobQueues(
    client(url),
    blocking,
    client(url),
    {
      prefix: `{jobs-${randomBytes(4).toString("hex")}}`,
      resultTtlMs: 60_000,
      failedTtlMs: 60_000,
      attempts: 1,
      backoffMs: 1000,
    },
    () => true,
  );
}

/** JobQueues whose first `failing` listener connections can never connect (a port nothing listens on, no retries). */
function queuesWithFailingListeners(failing: number) {
  const url = inject("redisUrl");
  const made = { n: 0 };
  const blocking = () =>
    made.n++ < failing ? client("redis://127.0.0.1:1", { retryStrategy: () => null, lazyConnect: false }) : client(url);
  return { queues: queuesOn(url, blocking), made };
}

describe("JobQueues event listeners", () => {
  const on = { final: () => undefined, active: () => undefined };

  it("try a listener that could not start again within the request (one refused connection is not a 503)", async () => {
    const { queues, made } = queuesWithFailingListeners(1);
    try {
      const stop = await queues.watch("m.aaaaaaaaaaaaaaaaaaaa", on);
      stop();
      expect(made.n).toBe(2);
      expect(queues.cached().events).toBe(1);
    } finally {
      await queues.close();
    }
  });

  it("drop a listener that could not start after its tries, so the next follower gets a new one (not the old failure for good)", async () => {
    const { queues, made } = queuesWithFailingListeners(3);
    try {
      await expect(queues.watch("m.aaaaaaaaaaaaaaaaaaaa", on)).rejects.toThrow();
      expect(made.n).toBe(3);
      const stop = await queues.watch("m.aaaaaaaaaaaaaaaaaaaa", on);
      stop();
      expect(made.n).toBe(4);
      expect(queues.cached().events).toBe(1);
    } finally {
      await queues.close();
    }
  });
});

describe("JobQueues event listeners, as they start", () => {
  it("deliver an event written the moment the first follower's listener is ready (BullMQ starts reading later)", async () => {
    // A job finishing just as its first follower subscribed and read its state: the
    // event comes right after watch() returns. Several fresh listeners, as each starts.
    const url = inject("redisUrl");
    const writer = client(url);
    for (let round = 0; round < 5; round++) {
      const queues = queuesOn(url);
      const model = `m-race-${round}`;
      const id = `${model}.${randomBytes(15).toString("base64url")}`;
      try {
        const got: unknown[] = [];
        const stop = await queues.watch(id, { final: (f) => got.push(f), active: () => undefined });
        const prefix = queues.settings.prefix;
        const events = `${queuePrefix(prefix, model)}:${queueName(model)}:events`;
        await writer.xadd(events, "*", "event", "completed", "jobId", id, "returnvalue", '{"outputs":{}}');
        const until = Date.now() + 10_000;
        while (got.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
        stop();
        expect(got, `round ${round}`).toEqual([{ result: { outputs: {} } }]);
      } finally {
        await queues.close();
      }
    }
  });
});

describe("JobQueues.enqueueMany", () => {
  const model = "m-enqueue";
  const item = (priority: EnqueueItem["priority"]): EnqueueItem => {
    const id = `${model}.${randomBytes(18).toString("base64url")}`;
    const data: JobData = {
      tenant: "t1",
      model,
      version: "1.0.0",
      inputs: [{ name: "x", dtype: "float32", shape: [1, 4] }],
      batch: 1,
      inputBytes: 16,
      timeoutMs: 1000,
      acceptedAt: Date.now(),
      deadline: Date.now() + 60_000,
      requestId: `req-${id}`,
    };
    return { id, data, inputs: randomBytes(16), priority };
  };

  it("store a lone job (no pipelines) exactly as a job of a bulk request: same hash and options, same list or set, its inputs kept past the deadline alike", async () => {
    const url = inject("redisUrl");
    const prefix = `{jobs-${randomBytes(4).toString("hex")}}`;
    const redis = client(url);
    const queues = new JobQueues(client(url), () => client(url), redis, {
      prefix,
      resultTtlMs: 60_000,
      failedTtlMs: 60_000,
      attempts: 2,
      backoffMs: 1000,
    });
    try {
      for (const priority of ["normal", "high", "low"] as const) {
        const lone = item(priority);
        const bulk = [item(priority), item(priority)];
        await queues.enqueueMany(model, [lone]);
        await queues.enqueueMany(model, bulk);
        const q = `${queuePrefix(prefix, model)}:${queueName(model)}`;
        const stored = async (i: EnqueueItem) => {
          const h = await redis.hgetall(`${q}:${i.id}`);
          const ttl = await redis.pexpiretime(keys.inputs(prefix, model, i.id));
          return {
            name: h.name,
            data: JSON.parse(h.data ?? "null"),
            opts: { ...JSON.parse(h.opts ?? "null"), jobId: JSON.parse(h.opts ?? "null")?.jobId === i.id },
            priority: h.priority,
            inputs: await redis.getBuffer(keys.inputs(prefix, model, i.id)),
            inputsExpireAfterDeadline: ttl - i.data.deadline,
          };
        };
        const a = await stored(lone);
        const b = await stored(bulk[0] as EnqueueItem);
        expect(a.data).toEqual(lone.data);
        expect(a.inputs?.equals(lone.inputs)).toBe(true);
        expect(a.inputsExpireAfterDeadline).toBeGreaterThan(0);
        expect({ ...a, data: null, inputs: null }).toEqual({ ...b, data: null, inputs: null });
        // Where each went: the wait list (high: LIFO at its head) or the prioritized set
        // (normal, where the take orders it by fair shares, and low behind it).
        const waiting = await redis.lrange(`${q}:wait`, 0, -1);
        const prioritized = await redis.zrange(`${q}:prioritized`, 0, -1);
        for (const i of [lone, ...bulk]) expect(priority === "high" ? waiting : prioritized).toContain(i.id);
      }
    } finally {
      await queues.close();
    }
  });

  it("endWaits answers a pending wait with the job's state, and later waits return at once (a shutdown holds no long-poll)", async () => {
    const queues = queuesOn(inject("redisUrl"));
    try {
      const job = item("normal");
      await queues.enqueueMany(model, [job]);
      const t0 = Date.now();
      const pending = queues.waitForFinish(job.id, "t1", 60_000);
      while (queues.watched().finals === 0) await new Promise((r) => setTimeout(r, 10));
      // Past its first check and reading the job when the waits end: it must not start its wait.
      const starting = queues.waitForFinish(job.id, "t1", 60_000);
      queues.endWaits();
      expect((await pending).status).toBe("queued");
      expect((await starting).status).toBe("queued");
      expect((await queues.waitForFinish(job.id, "t1", 60_000)).status).toBe("queued");
      // Both well before either wait's 60 s (the test's own limit is 30 s).
      expect(Date.now() - t0).toBeLessThan(20_000);
      expect(queues.watched().finals).toBe(0);
    } finally {
      await queues.close();
    }
  });
});
