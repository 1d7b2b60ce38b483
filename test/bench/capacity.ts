/**
 * Worker capacity: how many jobs per second one worker settles from a queue already
 * holding `total` jobs, with inference out of the way (a no-op model, or a no-op
 * processor). This is the ceiling a GPU behind that worker would see.
 *
 * Every contender drains the same number of pre-filled jobs from the same Redis, and
 * is measured the same way: the bench polls the queue's unsettled count (waiting,
 * prioritized, delayed, active) and takes the rate between the moments 5% and
 * 95% of the jobs had settled (start-up and the last partial batches left out), or
 * until `capMs` has passed. The polls' own Redis commands are measured and subtracted.
 */
import type { Queue } from "bullmq";
import type { Redis } from "ioredis";
import { commandDelta, commandStats, sleep } from "./harness.js";
import { type Probe, Window } from "./measure.js";

const UNSETTLED = ["wait", "active", "prioritized", "delayed"] as const;
const POLL_MS = 10;
const FROM = 0.05;
const TO = 0.95;

export interface DrainResult {
  /** Jobs settled during the measured interval. */
  jobs: number;
  seconds: number;
  jobsPerSec: number;
  /** False when `capMs` ended the interval before 95% had settled. */
  reachedEnd: boolean;
  cpuPerJob: Record<string, number>;
  redisCmdsPerJob: number;
  redisTop: Record<string, number>;
}

export interface StartedWorker {
  probes: Probe[];
  stop(): Promise<void>;
}

async function unsettled(queue: Queue): Promise<number> {
  const c = await queue.getJobCounts(...UNSETTLED);
  return UNSETTLED.reduce((a, k) => a + (c[k] ?? 0), 0);
}

/** Redis commands one poll costs, by command (its script's commands included), measured with nothing else running. */
async function pollCost(queue: Queue, admin: Redis): Promise<Record<string, number>> {
  const n = 20;
  const a = await commandStats(admin);
  for (let i = 0; i < n; i++) await unsettled(queue);
  const b = await commandStats(admin);
  return Object.fromEntries(Object.entries(commandDelta(a, b).byCommand).map(([k, v]) => [k, v / n]));
}

/**
 * Starts the worker (`start`) on `queue`, which must hold exactly `total` unsettled
 * jobs, and measures how fast it settles them; stops the worker before returning.
 */
export async function measureDrain(opts: {
  queue: Queue;
  total: number;
  capMs: number;
  admin: Redis;
  start: () => Promise<StartedWorker>;
}): Promise<DrainResult> {
  const { queue, total, admin } = opts;
  const before = await unsettled(queue);
  if (before !== total) {
    throw new Error(`capacity: queue ${queue.name} holds ${before} unsettled jobs, expected ${total}`);
  }
  const perPoll = await pollCost(queue, admin);
  let worker: StartedWorker | null = null;
  let window: Window | null = null;
  let polls = 0;
  const settledNow = async () => {
    polls++;
    return { at: performance.now(), settled: total - (await unsettled(queue)) };
  };
  try {
    let startFailed: { error: unknown } | null = null;
    const starting = opts.start().then(
      (w) => {
        worker = w;
      },
      (error: unknown) => {
        startFailed = { error };
      },
    );
    // Wait until the worker is known (its pid, for the CPU probes) and 5% has settled.
    const giveUpAt = performance.now() + opts.capMs + 60_000;
    let begin: { at: number; settled: number } | null = null;
    while (begin === null) {
      if (startFailed !== null) throw (startFailed as { error: unknown }).error;
      const s = await settledNow();
      if (s.at > giveUpAt)
        throw new Error(`capacity: ${queue.name}: ${s.settled} of ${total} settled, too slow to measure`);
      if (worker !== null && s.settled >= FROM * total) {
        window = new Window((worker as StartedWorker).probes, admin);
        await window.start();
        polls = 0;
        begin = await settledNow();
      } else await sleep(POLL_MS);
    }
    await starting;
    let end = begin;
    for (;;) {
      await sleep(POLL_MS);
      end = await settledNow();
      if (end.settled >= TO * total || end.at - begin.at >= opts.capMs) break;
    }
    await (window as Window | null)?.stop();
    const jobs = end.settled - begin.settled;
    const seconds = (end.at - begin.at) / 1000;
    const redis = (window as Window | null)?.redis(
      jobs,
      Object.fromEntries(Object.entries(perPoll).map(([k, v]) => [k, Math.round(v * polls)])),
    ) ?? { perJob: Number.NaN, top: {} };
    return {
      jobs,
      seconds,
      jobsPerSec: jobs / Math.max(1e-9, seconds),
      reachedEnd: end.settled >= TO * total,
      cpuPerJob: (window as Window | null)?.cpuPerJob(jobs) ?? {},
      redisCmdsPerJob: redis.perJob,
      redisTop: redis.top,
    };
  } finally {
    await (worker as StartedWorker | null)?.stop();
  }
}
