/**
 * How the benchmark measures a contender, the same way for every one of them: closed
 * and open load loops, CPU per process over the measured window, Redis commands, and
 * the median of repeated runs.
 *
 * Latency counts every job started in the window and every job in flight through the
 * whole window (its latency is at least the window length), including those still
 * unfinished when the window ends: they keep their real latency when they finish
 * later, and a job not finished one more window length after the end counts as
 * unfinished, with the time it waited so far. A contender cannot improve its
 * percentiles by leaving its slowest jobs unfinished. No latency at all gives NaN
 * percentiles (printed "-"), never 0.
 */
import type { Redis } from "ioredis";
import {
  type CommandStats,
  commandDelta,
  commandStats,
  cpuMsOf,
  percentile,
  rssOf,
  sleep,
  threadCpuMs,
} from "./harness.js";

export interface JobOutcome {
  ok: boolean;
  latencyMs: number;
  /** Samples the job carried (1 unless told). */
  samples?: number;
  batchSize?: number;
  inferenceMs?: number;
  code?: string;
}

export interface LoadResult {
  jobs: number;
  samples: number;
  failed: number;
  failures: Record<string, number>;
  /** Jobs started in the window and not finished one window length after its end. */
  unfinished: number;
  seconds: number;
  jobsPerSec: number;
  samplesPerSec: number;
  latencies: number[];
  overheads: number[];
  batchSizes: number[];
}

function emptyResult(seconds: number): LoadResult {
  return {
    jobs: 0,
    samples: 0,
    failed: 0,
    failures: {},
    unfinished: 0,
    seconds,
    jobsPerSec: 0,
    samplesPerSec: 0,
    latencies: [],
    overheads: [],
    batchSizes: [],
  };
}

function finish(r: LoadResult): LoadResult {
  r.jobsPerSec = r.jobs / r.seconds;
  r.samplesPerSec = r.samples / r.seconds;
  r.latencies.sort((a, b) => a - b);
  r.overheads.sort((a, b) => a - b);
  return r;
}

/** The job's outcome, or null when it is still unfinished at `deadline` (performance.now() time). */
async function settleBy(job: Promise<JobOutcome>, deadline: number): Promise<JobOutcome | null> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<null>((r) => {
    timer = setTimeout(() => r(null), Math.max(0, deadline - performance.now()));
  });
  try {
    return await Promise.race([job, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Latency (and overhead = latency − inference) of a job started in the window. */
function recordLatency(r: LoadResult, o: JobOutcome | null, waitedMs: number): void {
  if (o === null) {
    r.unfinished++;
    r.latencies.push(waitedMs);
    r.overheads.push(waitedMs);
    return;
  }
  if (!o.ok) return;
  r.latencies.push(o.latencyMs);
  if (o.inferenceMs !== undefined) r.overheads.push(o.latencyMs - o.inferenceMs);
  if (o.batchSize !== undefined) r.batchSizes.push(o.batchSize);
}

function recordFailure(r: LoadResult, o: JobOutcome): void {
  r.failed++;
  const c = o.code ?? "UNKNOWN";
  r.failures[c] = (r.failures[c] ?? 0) + 1;
}

/**
 * `concurrency` clients each run `one()` back to back. Throughput counts jobs finished
 * inside the window (after `warmupMs`, for `measureMs`); latency counts jobs started
 * inside it. `onWindow` runs at its start and end (samplers, Redis snapshots).
 */
export async function closedLoop(
  concurrency: number,
  warmupMs: number,
  measureMs: number,
  one: (i: number) => Promise<JobOutcome>,
  onWindow?: (phase: "start" | "end") => Promise<void>,
): Promise<LoadResult> {
  const t0 = performance.now();
  const winStart = t0 + warmupMs;
  const winEnd = winStart + measureMs;
  const giveUpAt = winEnd + measureMs;
  let seq = 0;
  const r = emptyResult(measureMs / 1000);
  let windowStarted = false;
  const windowTimer = setTimeout(() => {
    windowStarted = true;
    void onWindow?.("start");
  }, warmupMs);
  const client = async () => {
    while (performance.now() < winEnd) {
      const started = performance.now();
      const o = await settleBy(one(seq++), giveUpAt);
      const done = performance.now();
      // Started in the window, or in flight through all of it (so at least the window length).
      if (started >= winStart || done > winEnd) recordLatency(r, o, done - started);
      if (o === null) return;
      if (done >= winStart && done <= winEnd) {
        if (o.ok) {
          r.jobs++;
          r.samples += o.samples ?? 1;
        } else recordFailure(r, o);
      }
    }
  };
  const clients = Array.from({ length: concurrency }, client);
  await sleep(warmupMs + measureMs);
  if (windowStarted) await onWindow?.("end");
  clearTimeout(windowTimer);
  await Promise.all(clients);
  return finish(r);
}

/** Open loop: one job every 1/rate s for `measureMs` after `warmupMs`, regardless of completions. */
export async function openLoop(
  rate: number,
  warmupMs: number,
  measureMs: number,
  one: (i: number) => Promise<JobOutcome>,
): Promise<LoadResult> {
  const interval = 1000 / rate;
  const t0 = performance.now();
  const winEnd = t0 + warmupMs + measureMs;
  const giveUpAt = winEnd + measureMs;
  const pending: Promise<void>[] = [];
  const r = emptyResult(measureMs / 1000);
  for (let i = 0; ; i++) {
    const due = t0 + i * interval;
    if (due > winEnd) break;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    const counted = due >= t0 + warmupMs;
    const started = performance.now();
    pending.push(
      settleBy(one(i), giveUpAt).then((o) => {
        const done = performance.now();
        // Due in the window, or in flight through all of it (so at least the window length).
        if (counted || done > winEnd) recordLatency(r, o, done - started);
        if (!counted) return;
        if (o === null) return;
        if (o.ok) {
          r.jobs++;
          r.samples += o.samples ?? 1;
        } else recordFailure(r, o);
      }),
    );
  }
  await Promise.all(pending);
  return finish(r);
}

// ---------------------------------------------------------------------------------
// CPU and memory per process
// ---------------------------------------------------------------------------------

function cpuUsageMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

export class Sampler {
  private timer?: NodeJS.Timeout;
  readonly rss: number[] = [];
  private cpu0 = 0;
  private threads0 = { main: 0, others: 0 };
  private at0 = 0;
  /** CPU ms used during the window, in total and split by main thread / other threads. */
  cpuMs = 0;
  mainMs = 0;
  otherMs = 0;
  cpuShare = 0;
  constructor(readonly pid: number) {}
  start(): void {
    this.cpu0 = this.pid === process.pid ? cpuUsageMs() : cpuMsOf(this.pid);
    this.threads0 = threadCpuMs(this.pid);
    this.at0 = performance.now();
    this.timer = setInterval(() => this.rss.push(rssOf(this.pid)), 500);
    this.timer.unref();
  }
  stop(): void {
    clearInterval(this.timer);
    this.rss.push(rssOf(this.pid));
    this.cpuMs = (this.pid === process.pid ? cpuUsageMs() : cpuMsOf(this.pid)) - this.cpu0;
    const t = threadCpuMs(this.pid);
    this.mainMs = t.main - this.threads0.main;
    this.otherMs = t.others - this.threads0.others;
    this.cpuShare = this.cpuMs / Math.max(1, performance.now() - this.at0);
  }
  get maxRss(): number {
    return Math.max(0, ...this.rss);
  }
}

/** A component whose CPU is counted: a whole process, or its main thread, or its other threads. */
export interface Probe {
  key: string;
  pid: number;
  part?: "all" | "main" | "others";
}

/** Samples a set of probes and Redis's command counts over one window. */
export class Window {
  private readonly samplers = new Map<number, Sampler>();
  private stats0: CommandStats = new Map();
  private stats1: CommandStats = new Map();
  constructor(
    private readonly probes: readonly Probe[],
    private readonly admin: Redis,
  ) {
    for (const p of probes) if (p.pid && !this.samplers.has(p.pid)) this.samplers.set(p.pid, new Sampler(p.pid));
  }
  async start(): Promise<void> {
    for (const s of this.samplers.values()) s.start();
    this.stats0 = await commandStats(this.admin);
  }
  async stop(): Promise<void> {
    for (const s of this.samplers.values()) s.stop();
    this.stats1 = await commandStats(this.admin);
  }
  /** CPU ms per job, per probe (NaN for a probe with no process). */
  cpuPerJob(jobs: number): Record<string, number> {
    const ms: Record<string, number> = {};
    for (const p of this.probes) {
      const s = this.samplers.get(p.pid);
      const v = !s ? Number.NaN : p.part === "main" ? s.mainMs : p.part === "others" ? s.otherMs : s.cpuMs;
      ms[p.key] = (ms[p.key] ?? 0) + v;
    }
    return perJob(jobs, ms);
  }
  /** Cores busy during the window, summed over the probes' processes whose key is in `keys`. */
  cores(keys: readonly string[]): number {
    const pids = new Set(this.probes.filter((p) => keys.includes(p.key)).map((p) => p.pid));
    let sum = 0;
    for (const pid of pids) sum += this.samplers.get(pid)?.cpuShare ?? 0;
    return sum;
  }
  maxRssMb(keys: readonly string[]): number {
    const pids = new Set(this.probes.filter((p) => keys.includes(p.key)).map((p) => p.pid));
    let max = 0;
    for (const pid of pids) max = Math.max(max, this.samplers.get(pid)?.maxRss ?? 0);
    return max / 2 ** 20;
  }
  /** Redis commands in the window (those inside Lua included), less `excluded` by command (e.g. the bench's own polls). */
  redis(jobs: number, excluded: Record<string, number> = {}): { perJob: number; top: Record<string, number> } {
    const d = commandDelta(this.stats0, this.stats1);
    const byCommand: Record<string, number> = {};
    let all = 0;
    for (const [k, v] of Object.entries(d.byCommand)) {
      const n = Math.max(0, v - (excluded[k] ?? 0));
      if (n > 0) byCommand[k] = n;
      all += n;
    }
    return { perJob: jobs > 0 ? all / jobs : Number.NaN, top: topN(byCommand, jobs, 8) };
  }
}

/** Per job, rounded to 0.01; NaN when no job finished (a total is not a per-job figure). */
export function perJob(jobs: number, ms: Record<string, number>): Record<string, number> {
  return Object.fromEntries(
    Object.entries(ms).map(([k, v]) => [k, jobs > 0 ? Math.round((v / jobs) * 100) / 100 : Number.NaN]),
  );
}

export function topN(by: Record<string, number>, jobs: number, n: number): Record<string, number> {
  if (jobs <= 0) return {};
  return Object.fromEntries(
    Object.entries(by)
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([k, v]) => [k, Math.round((v / Math.max(1, jobs)) * 100) / 100]),
  );
}

/** The run whose `rate` is the median of `runs` (the lower middle one for an even count). */
export function medianRun<T>(runs: readonly T[], rate: (t: T) => number): T {
  if (runs.length === 0) throw new Error("no runs to take a median of");
  const sorted = [...runs].sort((a, b) => rate(a) - rate(b));
  return sorted[Math.floor((sorted.length - 1) / 2)] as T;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] ?? 0;
}

export { percentile };
