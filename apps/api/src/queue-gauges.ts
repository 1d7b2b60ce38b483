import type { JobQueues } from "@citadel/queue";
import type { ModelCatalog } from "@citadel/submit";
import type { Logger } from "@citadel/telemetry";
import type { ApiMetrics } from "./metrics.js";

/** Reads every served model's queue counts and oldest waiting job into the queue gauges (before a scrape). */
export async function collectQueueGauges(d: {
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
      const oldest = await q.getJobs(["wait"], 0, 0, true);
      const ts = oldest[0]?.timestamp;
      d.metrics.oldest.set({ model }, ts ? (Date.now() - ts) / 1000 : 0);
    } catch (err) {
      d.log.warn({ err, model }, "queue gauges unavailable");
    }
  }
}
