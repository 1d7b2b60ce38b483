import { randomBytes } from "node:crypto";
import { Redis, type RedisOptions } from "ioredis";
import { afterAll, describe, expect, inject, it } from "vitest";
import { JobQueues } from "./jobs.js";

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

/** JobQueues whose first `failing` listener connections can never connect (a port nothing listens on, no retries). */
function queuesWithFailingListeners(failing: number) {
  const url = inject("redisUrl");
  const made = { n: 0 };
  const blocking = () =>
    made.n++ < failing ? client("redis://127.0.0.1:1", { retryStrategy: () => null, lazyConnect: false }) : client(url);
  const queues = new JobQueues(
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
  return { queues, made };
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
