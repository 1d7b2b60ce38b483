import { type JobQueues, keys, type RedisConn } from "@citadel/queue";
import type { ModelCatalog } from "@citadel/submit";
import type { Logger } from "@citadel/telemetry";
import type { ApiMetrics } from "./metrics.js";

/**
 * Reads every served model's queue counts, the age of the next queued job to run
 * and outbox backlog into the queue gauges (before a scrape).
 */
export async function collectQueueGauges(d: {
  redis: RedisConn;
  prefix: string;
  catalog: ModelCatalog;
  queues: JobQueues;
  metrics: ApiMetrics;
  log: Logger;
}): Promise<void> {
  for (const model of d.catalog.models()) {
    try {
      const q = d.queues.queue(model);
      const c = await q.getJobCounts("waiting", "prioritized", "active", "delayed");
      for (const state of ["waiting", "prioritized", "active", "delayed"] as const)
        d.metrics.pending.set({ model, state }, c[state] ?? 0);
      // The head of each list a worker takes from: the wait list (high priority) and
      // BullMQ's prioritized set (normal jobs in fair-share order, then low ones): the age
      // of the next job to run, which grows while no worker takes any.
      const heads = await Promise.all([q.getJobs(["wait"], 0, 0, true), q.getJobs(["prioritized"], 0, 0, true)]);
      const stamps = heads.flatMap((h) => (h[0]?.timestamp ? [h[0].timestamp] : []));
      d.metrics.oldest.set({ model }, stamps.length > 0 ? (Date.now() - Math.min(...stamps)) / 1000 : 0);
      d.metrics.outbox.set({ model }, await d.redis.xlen(keys.outbox(d.prefix, model)));
    } catch (err) {
      d.log.warn({ err, model }, "queue gauges unavailable");
    }
  }
}
