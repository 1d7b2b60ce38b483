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

describe("JobQueues event listeners", () => {
  it("drop a listener that could not start, so the next follower gets a new one (not the old failure for good)", async () => {
    const url = inject("redisUrl");
    let made = 0;
    // The first listener's connection can never connect (a port nothing listens on, no retries).
    const blocking = () =>
      made++ === 0 ? client("redis://127.0.0.1:1", { retryStrategy: () => null, lazyConnect: false }) : client(url);
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
    try {
      const on = { final: () => undefined, active: () => undefined };
      await expect(queues.watch("m.aaaaaaaaaaaaaaaaaaaa", on)).rejects.toThrow();
      const stop = await queues.watch("m.aaaaaaaaaaaaaaaaaaaa", on);
      stop();
      expect(made).toBe(2);
      expect(queues.cached().events).toBe(1);
    } finally {
      await queues.close();
    }
  });
});
