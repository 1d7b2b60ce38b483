import { monitorEventLoopDelay } from "node:perf_hooks";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";

/**
 * Load shedding on event-loop lag: while the loop's mean lag over the last window is
 * past `maxDelayMs`, every request is answered by `shed` before any work is done for
 * it, except the routes whose config says `liveness: true` (a liveness probe that fails
 * under load gets an overloaded pod restarted, which moves its load onto the others).
 *
 * Written here rather than with @fastify/under-pressure, which samples the loop every
 * 10 ms whatever it is asked to check: that timer woke an idle API 100 times a second,
 * and at light load every job paid for the wake-ups between its own. The lag is judged
 * as under-pressure judges it (the mean delay of the sampling timer past its due time,
 * over a window), to within `sampleMs`: a shedding bound is far above that.
 */
export interface LagShedding {
  maxDelayMs: number;
  /** How often the loop is sampled; each sample is a timer that wakes the process. */
  sampleMs: number;
  /** How often the lag is judged (and the samples restarted). */
  windowMs: number;
  /** Answers a shed request (sends its reply). */
  shed(req: FastifyRequest, reply: FastifyReply): FastifyReply;
}

/** Route config that keeps a route answering while the API sheds load. */
export interface SheddingConfig {
  liveness?: boolean;
}

export function shedOnLag(app: FastifyInstance, o: LagShedding): void {
  const delay = monitorEventLoopDelay({ resolution: o.sampleMs });
  delay.enable();
  let lagMs = 0;
  const judge = setInterval(() => {
    // No sample in a whole window: the loop never took a turn for the timer.
    lagMs = delay.count > 0 ? Math.max(0, delay.mean / 1e6 - o.sampleMs) : Number.POSITIVE_INFINITY;
    delay.reset();
  }, o.windowMs);
  judge.unref();
  app.addHook("onClose", async () => {
    clearInterval(judge);
    delay.disable();
  });
  app.addHook("onRequest", async (req, reply) => {
    if (lagMs <= o.maxDelayMs || (req.routeOptions.config as SheddingConfig | undefined)?.liveness) return;
    return o.shed(req, reply);
  });
}
