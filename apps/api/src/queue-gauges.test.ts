import { randomBytes } from "node:crypto";
import { JobQueues } from "@citadel/queue";
import type { ModelCatalog } from "@citadel/submit";
import { createLogger, createRegistry } from "@citadel/telemetry";
import { Redis } from "ioredis";
import { afterAll, describe, expect, inject, it } from "vitest";
import { apiMetrics } from "./metrics.js";
import { collectQueueGauges } from "./queue-gauges.js";

// The queue gauges against the real Redis the run shares, under this file's own prefix.

const clients: Redis[] = [];
const client = (url: string) => {
  const c = new Redis(url, { maxRetriesPerRequest: null });
  c.on("error", () => undefined);
  clients.push(c);
  return c;
};
afterAll(() => {
  for (const c of clients) c.disconnect();
});

describe("collectQueueGauges", () => {
  it("ages the oldest job a worker could take, a low-priority one (BullMQ's prioritized set) included", async () => {
    const url = inject("redisUrl");
    const prefix = `{gauges-${randomBytes(4).toString("hex")}}`;
    const redis = client(url);
    const queues = new JobQueues(
      redis,
      () => client(url),
      client(url),
      { prefix, resultTtlMs: 60_000, failedTtlMs: 60_000, attempts: 1, backoffMs: 1000 },
      () => true,
    );
    const metrics = apiMetrics(createRegistry("test", false));
    const collect = () =>
      collectQueueGauges({
        redis,
        prefix,
        catalog: { models: () => ["m"] } as unknown as ModelCatalog,
        queues,
        metrics,
        log: createLogger({ name: "test", level: "silent" }),
      });
    const gauge = async (g: { get(): Promise<{ values: { value: number; labels: object }[] }> }) =>
      (await g.get()).values.find((v) => (v.labels as { model?: string }).model === "m")?.value;
    try {
      await collect();
      expect(await gauge(metrics.oldest)).toBe(0);
      // Only a low-priority job, queued a minute ago: nothing in the wait list.
      await queues.queue("m").add("infer", {} as never, { priority: 10, timestamp: Date.now() - 60_000 });
      await collect();
      expect(await gauge(metrics.oldest)).toBeGreaterThanOrEqual(59);
      // A normal job queued since does not make the queue look younger.
      await queues.queue("m").add("infer", {} as never, { timestamp: Date.now() - 1000 });
      await collect();
      expect(await gauge(metrics.oldest)).toBeGreaterThanOrEqual(59);
    } finally {
      await queues.close();
    }
  });
});
