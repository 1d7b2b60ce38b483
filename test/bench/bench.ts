/**
 * Citadel against the onnxruntime limit and a naive BullMQ worker, in one run, on
 * the same machine, models, inputs and intra-op thread count.
 *
 *   npm run bench                 # full (~8 min on 2 cores)
 *   npm run bench -- --quick      # ~3 min, shorter windows
 *   node --import tsx test/bench/bench.ts [--quick] [--models heavy,ocr] [--threads 2]
 *        [--workers 1] [--seconds 20] [--no-svg]
 *
 * Contenders, per model:
 *   limit   onnxruntime alone in a loop, best of a few batch sizes (samples/s);
 *   naive   a plain BullMQ Worker (its own process) calling session.run per job, fed
 *           by Queue.add with the same base64 payload; clients wait with
 *           job.waitUntilFinished (jobs/s);
 *   citadel the API and worker(s) as real processes; clients POST /v1/jobs and fetch
 *           the result with GET /v1/jobs/:id?wait= (jobs/s, samples/s).
 * Plus bulk submit (POST /v1/jobs/bulk, small inputs, one API process) and the
 * overhead at half load (end-to-end latency minus inference time).
 *
 * Uses a private redis-server on a free port when one can be started (so that
 * `INFO commandstats` counts only this benchmark), else REDIS_URL.
 * Prints a table and, last, one line of JSON. Writes docs/perf-bench.svg.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { OCR_CLS_PATH } from "@citadel/cli/sample-models";
import { buildHeavyConvNet, buildIdentityModel } from "@citadel/onnx";
import { Queue, QueueEvents } from "bullmq";
import { Redis } from "ioredis";
import * as ort from "onnxruntime-node";
import {
  apiEnv,
  b64,
  Client,
  type CommandStats,
  commandDelta,
  commandStats,
  cpuMsOf,
  freePort,
  haveRedisServer,
  mean,
  type OwnRedis,
  type Proc,
  percentile,
  randomInput,
  repoRoot,
  rssOf,
  say,
  setupFleet,
  sleep,
  startOwnRedis,
  startProc,
  threadCpuMs,
  workerEnv,
} from "./harness.js";
import { renderChart } from "./svg.js";

// ---------------------------------------------------------------------------------
// options
// ---------------------------------------------------------------------------------

interface Options {
  quick: boolean;
  models: string[];
  threads: number;
  workers: number;
  seconds: number;
  svg: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { quick: false, models: ["heavy", "ocr"], threads: 1, workers: 1, seconds: 0, svg: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i] ?? "";
    if (a === "--quick") o.quick = true;
    else if (a === "--models") o.models = next().split(",");
    else if (a === "--threads") o.threads = Number(next());
    else if (a === "--workers") o.workers = Number(next());
    else if (a === "--seconds") o.seconds = Number(next());
    else if (a === "--no-svg") o.svg = false;
    else if (a === "--help" || a === "-h") {
      process.stdout.write(
        "usage: bench.ts [--quick] [--models heavy,ocr] [--threads N] [--workers N] [--seconds S] [--no-svg]\n",
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  if (o.seconds === 0) o.seconds = o.quick ? 8 : 20;
  return o;
}

// ---------------------------------------------------------------------------------
// models
// ---------------------------------------------------------------------------------

interface BenchModel {
  key: string;
  name: string;
  label: string;
  bytes: Uint8Array;
  dims: number[];
  input: string;
  range: [number, number];
}

function benchModels(keys: string[]): BenchModel[] {
  const all: BenchModel[] = [
    {
      key: "heavy",
      name: "heavy-conv",
      label: "heavy conv net (generated, x[N,3,64,64])",
      bytes: buildHeavyConvNet(),
      dims: [3, 64, 64],
      input: "x",
      range: [-10, 10],
    },
    {
      key: "ocr",
      name: "ocr-cls",
      label: "PaddleOCR direction classifier (x[N,3,48,192], 110 KB/sample)",
      bytes: new Uint8Array(readFileSync(OCR_CLS_PATH)),
      dims: [3, 48, 192],
      input: "x",
      range: [-1, 1],
    },
  ];
  return all.filter((m) => keys.includes(m.key));
}

const perSample = (m: BenchModel) => m.dims.reduce((a, b) => a * b, 1);

/** A pool of distinct inputs (1 sample each), base64-encoded once, reused round-robin by every contender. */
function inputPool(m: BenchModel, n: number): string[] {
  return Array.from({ length: n }, (_, i) => b64(randomInput(perSample(m), 1000 + i)));
}

// ---------------------------------------------------------------------------------
// limit: onnxruntime alone
// ---------------------------------------------------------------------------------

interface LimitResult {
  bestBatch: number;
  samplesPerSec: number;
  msPerSample: number;
  byBatch: Record<number, number>;
}

async function measureLimit(m: BenchModel, threads: number, batches: number[], ms: number): Promise<LimitResult> {
  const session = await ort.InferenceSession.create(m.bytes, {
    executionProviders: ["cpu"],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  });
  const byBatch: Record<number, number> = {};
  try {
    // Two interleaved passes, best of both: other processes on a shared machine add noise.
    for (let pass = 0; pass < 2; pass++) {
      for (const b of batches) {
        const data = new Float32Array(b * perSample(m));
        for (let k = 0; k < b; k++) data.set(randomInput(perSample(m), 1000 + k), k * perSample(m));
        const feeds = { [m.input]: new ort.Tensor("float32", data, [b, ...m.dims]) };
        for (let w = 0; w < 3; w++) await session.run(feeds);
        const t0 = performance.now();
        let n = 0;
        while (performance.now() - t0 < ms / 2) {
          await session.run(feeds);
          n += b;
        }
        const rate = n / ((performance.now() - t0) / 1000);
        byBatch[b] = Math.max(byBatch[b] ?? 0, rate);
      }
    }
  } finally {
    await session.release();
  }
  let bestBatch = batches[0] ?? 1;
  for (const b of batches) if ((byBatch[b] ?? 0) > (byBatch[bestBatch] ?? 0)) bestBatch = b;
  const samplesPerSec = byBatch[bestBatch] ?? 0;
  return { bestBatch, samplesPerSec, msPerSample: 1000 / samplesPerSec, byBatch };
}

// ---------------------------------------------------------------------------------
// closed-loop load
// ---------------------------------------------------------------------------------

interface JobOutcome {
  ok: boolean;
  latencyMs: number;
  batchSize?: number;
  inferenceMs?: number;
  code?: string;
}

interface LoadResult {
  jobs: number;
  failed: number;
  failures: Record<string, number>;
  seconds: number;
  jobsPerSec: number;
  latencies: number[];
  overheads: number[];
  batchSizes: number[];
}

/**
 * `concurrency` clients each run `one()` back to back. Only jobs *started* after the
 * warm-up and finished before the end count; throughput is completions in the window.
 */
async function closedLoop(
  concurrency: number,
  warmupMs: number,
  measureMs: number,
  one: (i: number) => Promise<JobOutcome>,
  onWindow?: (phase: "start" | "end") => Promise<void>,
): Promise<LoadResult> {
  const t0 = performance.now();
  const winStart = t0 + warmupMs;
  const winEnd = winStart + measureMs;
  let seq = 0;
  const r: LoadResult = {
    jobs: 0,
    failed: 0,
    failures: {},
    seconds: measureMs / 1000,
    jobsPerSec: 0,
    latencies: [],
    overheads: [],
    batchSizes: [],
  };
  let windowStarted = false;
  const windowTimer = setTimeout(() => {
    windowStarted = true;
    void onWindow?.("start");
  }, warmupMs);
  const client = async () => {
    while (performance.now() < winEnd) {
      const started = performance.now();
      const o = await one(seq++);
      const done = performance.now();
      if (done >= winStart && done <= winEnd) {
        if (o.ok) r.jobs++;
        else {
          r.failed++;
          const c = o.code ?? "UNKNOWN";
          r.failures[c] = (r.failures[c] ?? 0) + 1;
        }
      }
      if (started >= winStart && done <= winEnd && o.ok) {
        r.latencies.push(o.latencyMs);
        if (o.inferenceMs !== undefined) r.overheads.push(o.latencyMs - o.inferenceMs);
        if (o.batchSize !== undefined) r.batchSizes.push(o.batchSize);
      }
    }
  };
  const clients = Array.from({ length: concurrency }, client);
  await sleep(warmupMs + measureMs);
  if (windowStarted) await onWindow?.("end");
  clearTimeout(windowTimer);
  await Promise.all(clients);
  r.jobsPerSec = r.jobs / r.seconds;
  r.latencies.sort((a, b) => a - b);
  r.overheads.sort((a, b) => a - b);
  return r;
}

/** Open loop: one job every 1/rate s for `ms`, regardless of completions. */
async function openLoop(rate: number, warmupMs: number, ms: number, one: (i: number) => Promise<JobOutcome>) {
  const interval = 1000 / rate;
  const t0 = performance.now();
  const pending: Promise<void>[] = [];
  const r = { jobs: 0, failed: 0, latencies: [] as number[], overheads: [] as number[], batchSizes: [] as number[] };
  for (let i = 0; ; i++) {
    const due = t0 + i * interval;
    if (due > t0 + warmupMs + ms) break;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    const counted = due >= t0 + warmupMs;
    pending.push(
      one(i).then((o) => {
        if (!counted) return;
        if (!o.ok) {
          r.failed++;
          return;
        }
        r.jobs++;
        r.latencies.push(o.latencyMs);
        if (o.inferenceMs !== undefined) r.overheads.push(o.latencyMs - o.inferenceMs);
        if (o.batchSize !== undefined) r.batchSizes.push(o.batchSize);
      }),
    );
  }
  await Promise.all(pending);
  r.latencies.sort((a, b) => a - b);
  r.overheads.sort((a, b) => a - b);
  return r;
}

// ---------------------------------------------------------------------------------
// resource sampling
// ---------------------------------------------------------------------------------

class Sampler {
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
  constructor(private readonly pid: number) {}
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
    this.cpuShare = this.cpuMs / (performance.now() - this.at0);
  }
  get maxRss(): number {
    return Math.max(0, ...this.rss);
  }
}

function cpuUsageMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

// ---------------------------------------------------------------------------------
// naive contender
// ---------------------------------------------------------------------------------

interface ContenderResult {
  jobsPerSec: number;
  samplesPerSec: number;
  p50: number;
  p99: number;
  failed: number;
  failures: Record<string, number>;
  avgBatch: number;
  rssMb: number;
  cpuCores: number;
  redisCmdsPerJob: number;
  redisTop: Record<string, number>;
  /** CPU ms per job by component, during the measured window. */
  cpuPerJob: Record<string, number>;
}

async function runNaive(
  m: BenchModel,
  o: Options,
  redisUrl: string,
  dir: string,
  pool: string[],
  concurrency: number,
  admin: Redis,
  redisPid: number,
): Promise<ContenderResult> {
  const modelFile = path.join(dir, `${m.name}.onnx`);
  writeFileSync(modelFile, m.bytes, { mode: 0o600 });
  const prefix = `{naive-${process.pid}}`;
  const queueName = `naive-${m.name}`;
  const { spawn } = await import("node:child_process");
  const child = spawn(process.execPath, ["--import", "tsx", path.join(repoRoot, "test/bench/naive-worker.ts")], {
    cwd: repoRoot,
    env: {
      PATH: process.env.PATH ?? "",
      REDIS_URL: redisUrl,
      NAIVE_QUEUE: queueName,
      NAIVE_PREFIX: prefix,
      NAIVE_MODEL: modelFile,
      NAIVE_THREADS: String(o.threads),
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on("data", (d: Buffer) => d.toString().includes("ready") && resolve());
    child.once("exit", (c) => reject(new Error(`naive worker exited with ${c}`)));
  });
  const connection = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue(queueName, { connection, prefix });
  const events = new QueueEvents(queueName, {
    connection: new Redis(redisUrl, { maxRetriesPerRequest: null }),
    prefix,
  });
  await events.waitUntilReady();
  queue.setMaxListeners(concurrency * 4);
  events.setMaxListeners(concurrency * 4);
  const sampler = new Sampler(child.pid ?? 0);
  const redisSampler = new Sampler(redisPid);
  const clientSampler = new Sampler(process.pid);
  let stats0: CommandStats = new Map();
  let stats1: CommandStats = new Map();
  try {
    const res = await closedLoop(
      concurrency,
      o.quick ? 2000 : 4000,
      o.seconds * 1000,
      async (i) => {
        const t = performance.now();
        try {
          const job = await queue.add("infer", {
            inputs: { [m.input]: { dtype: "float32", shape: [1, ...m.dims], data: pool[i % pool.length] ?? "" } },
          });
          await job.waitUntilFinished(events, 60_000);
          return { ok: true, latencyMs: performance.now() - t, batchSize: 1 };
        } catch {
          return { ok: false, latencyMs: performance.now() - t, code: "FAILED" };
        }
      },
      async (phase) => {
        if (phase === "start") {
          for (const x of [sampler, redisSampler, clientSampler]) x.start();
          stats0 = await commandStats(admin);
        } else {
          for (const x of [sampler, redisSampler, clientSampler]) x.stop();
          stats1 = await commandStats(admin);
        }
      },
    );
    const cmds = commandDelta(stats0, stats1);
    return {
      jobsPerSec: res.jobsPerSec,
      samplesPerSec: res.jobsPerSec,
      p50: percentile(res.latencies, 50),
      p99: percentile(res.latencies, 99),
      failed: res.failed,
      failures: res.failures,
      avgBatch: 1,
      rssMb: sampler.maxRss / 2 ** 20,
      cpuCores: sampler.cpuShare,
      redisCmdsPerJob: cmds.all / Math.max(1, res.jobs),
      redisTop: topN(cmds.byCommand, res.jobs, 6),
      cpuPerJob: perJob(res.jobs, {
        worker: sampler.cpuMs,
        redis: redisPid ? redisSampler.cpuMs : Number.NaN,
        client: clientSampler.cpuMs,
      }),
    };
  } finally {
    child.kill("SIGTERM");
    await new Promise((r) => child.once("exit", r));
    await events.close();
    await queue.obliterate({ force: true }).catch(() => undefined);
    await queue.close();
    connection.disconnect();
  }
}

function perJob(jobs: number, ms: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(ms).map(([k, v]) => [k, Math.round((v / Math.max(1, jobs)) * 100) / 100]));
}

function topN(by: Record<string, number>, jobs: number, n: number): Record<string, number> {
  return Object.fromEntries(
    Object.entries(by)
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([k, v]) => [k, Math.round((v / Math.max(1, jobs)) * 100) / 100]),
  );
}

// ---------------------------------------------------------------------------------
// Citadel contender
// ---------------------------------------------------------------------------------

function citadelJob(client: Client, m: BenchModel, pool: string[]): (i: number) => Promise<JobOutcome> {
  // Bodies are built once: the client's own cost should not be what is measured.
  const bodies = pool.map((data) =>
    JSON.stringify({ model: m.name, inputs: { [m.input]: { dtype: "float32", shape: [1, ...m.dims], data } } }),
  );
  return async (i) => {
    const body = bodies[i % bodies.length] ?? "";
    const t = performance.now();
    try {
      const s = await client.submit(body);
      if (s.status !== 202 || !s.id)
        return { ok: false, latencyMs: performance.now() - t, code: s.code ?? `HTTP_${s.status}` };
      const v = await client.waitFinal(s.id);
      const latencyMs = performance.now() - t;
      if (v.status !== "completed" || !v.result)
        return { ok: false, latencyMs, code: v.error?.code ?? v.status.toUpperCase() };
      return { ok: true, latencyMs, batchSize: v.result.batchSize, inferenceMs: v.result.inferenceMs };
    } catch (err) {
      return { ok: false, latencyMs: performance.now() - t, code: (err as Error).name };
    }
  };
}

interface CitadelResult extends ContenderResult {
  halfLoad: {
    rate: number;
    jobs: number;
    p50: number;
    p99: number;
    overheadP50: number;
    overheadP99: number;
    avgBatch: number;
  };
  overheadP50: number;
  overheadP99: number;
  apiCpuCores: number;
  redisCpuCores: number;
}

async function runCitadel(
  m: BenchModel,
  o: Options,
  fleet: Awaited<ReturnType<typeof setupFleet>>,
  api: Proc,
  pool: string[],
  concurrency: number,
  admin: Redis,
  redisPid: number,
): Promise<CitadelResult> {
  const workers: Proc[] = [];
  for (let w = 0; w < o.workers; w++) {
    const port = await freePort();
    workers.push(
      await startProc(
        "worker",
        `worker-${m.key}-${w + 1}`,
        workerEnv(fleet.env, port, `bench-${m.key}-${w + 1}`, {
          WORKER_MODELS: m.name,
          RUNTIME_THREADS: String(o.threads),
        }),
        fleet.logDir,
        port,
      ),
    );
  }
  const client = new Client(api.url, fleet.apiKey);
  const one = citadelJob(client, m, pool);
  const samplers = workers.map((w) => new Sampler(w.pid));
  const apiSampler = new Sampler(api.pid);
  const redisSampler = new Sampler(redisPid);
  const clientSampler = new Sampler(process.pid);
  let stats0: CommandStats = new Map();
  let stats1: CommandStats = new Map();
  try {
    const res = await closedLoop(concurrency, o.quick ? 3000 : 5000, o.seconds * 1000, one, async (phase) => {
      if (phase === "start") {
        for (const s of [...samplers, apiSampler, redisSampler, clientSampler]) s.start();
        stats0 = await commandStats(admin);
      } else {
        for (const s of [...samplers, apiSampler, redisSampler, clientSampler]) s.stop();
        stats1 = await commandStats(admin);
      }
    });
    const cmds = commandDelta(stats0, stats1);
    // Half load: an open loop at half the closed-loop throughput.
    const rate = Math.max(1, res.jobsPerSec / 2);
    const half = await openLoop(rate, 2000, (o.quick ? 6 : 12) * 1000, one);
    return {
      jobsPerSec: res.jobsPerSec,
      samplesPerSec: res.jobsPerSec,
      p50: percentile(res.latencies, 50),
      p99: percentile(res.latencies, 99),
      failed: res.failed,
      failures: res.failures,
      avgBatch: mean(res.batchSizes),
      rssMb: Math.max(...samplers.map((s) => s.maxRss)) / 2 ** 20,
      cpuCores: samplers.reduce((a, s) => a + s.cpuShare, 0),
      apiCpuCores: apiSampler.cpuShare,
      redisCpuCores: redisPid ? redisSampler.cpuShare : 0,
      redisCmdsPerJob: cmds.all / Math.max(1, res.jobs),
      redisTop: topN(cmds.byCommand, res.jobs, 8),
      cpuPerJob: perJob(res.jobs, {
        api: apiSampler.cpuMs,
        workerMain: samplers.reduce((a, x) => a + x.mainMs, 0),
        workerRunner: samplers.reduce((a, x) => a + x.otherMs, 0),
        redis: redisPid ? redisSampler.cpuMs : Number.NaN,
        client: clientSampler.cpuMs,
      }),
      overheadP50: percentile(res.overheads, 50),
      overheadP99: percentile(res.overheads, 99),
      halfLoad: {
        rate,
        jobs: half.jobs,
        p50: percentile(half.latencies, 50),
        p99: percentile(half.latencies, 99),
        overheadP50: percentile(half.overheads, 50),
        overheadP99: percentile(half.overheads, 99),
        avgBatch: mean(half.batchSizes),
      },
    };
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
  }
}

// ---------------------------------------------------------------------------------
// bulk submit
// ---------------------------------------------------------------------------------

async function runBulk(
  o: Options,
  api: Proc,
  apiKey: string,
  model: string,
  width: number,
): Promise<{
  jobsPerSec: number;
  requests: number;
  accepted: number;
  refused: Record<string, number>;
  apiCpuCores: number;
}> {
  const client = new Client(api.url, apiKey);
  const per = 500;
  const jobs = Array.from({ length: per }, (_, i) => ({
    model,
    inputs: { x: { dtype: "float32", shape: [1, width], data: b64(randomInput(width, i)) } },
  }));
  const body = JSON.stringify({ jobs });
  const refused: Record<string, number> = {};
  let accepted = 0;
  let requests = 0;
  const warm = performance.now() + 1500;
  const end = warm + (o.quick ? 4000 : 8000);
  let counting = false;
  const sampler = new Sampler(api.pid);
  const loop = async () => {
    while (performance.now() < end) {
      const started = performance.now();
      const r = await client.bulk(body);
      if (started < warm || performance.now() > end) continue;
      counting = true;
      requests++;
      if (r.status !== 202) refused[r.code ?? `HTTP_${r.status}`] = (refused[r.code ?? `HTTP_${r.status}`] ?? 0) + per;
      for (const j of r.results) {
        if (j.id) accepted++;
        else if (j.error) refused[j.error.code] = (refused[j.error.code] ?? 0) + 1;
      }
    }
  };
  const t = setTimeout(() => sampler.start(), 1500);
  await Promise.all([loop(), loop(), loop(), loop()]);
  clearTimeout(t);
  sampler.stop();
  void counting;
  return { jobsPerSec: accepted / ((end - warm) / 1000), requests, accepted, refused, apiCpuCores: sampler.cpuShare };
}

// ---------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------

const fmt = (n: number, d = 0) => (Number.isFinite(n) ? n.toFixed(d) : "-");

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const started = performance.now();
  const load0 = os.loadavg();
  say(
    `bench: ${o.quick ? "quick" : "full"}; ${os.cpus().length} cores; load avg ${load0.map((x) => x.toFixed(2)).join(" ")}`,
  );
  say(`bench: onnxruntime intra-op threads ${o.threads} in every contender; ${o.workers} Citadel worker(s)`);

  let own: OwnRedis | null = null;
  let redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
  if (haveRedisServer()) {
    own = await startOwnRedis();
    redisUrl = own.url;
    say(`bench: private redis-server at ${redisUrl} (commandstats count only this benchmark)`);
  } else say(`bench: using REDIS_URL ${redisUrl}; Redis command counts include other clients`);
  const admin = new Redis(redisUrl);
  const redisPid = Number(/process_id:(\d+)/.exec(await admin.info("server"))?.[1] ?? "0");
  const models = benchModels(o.models);
  const fleet = await setupFleet({ redisUrl, prefix: "{bench}" });
  const dir = fleet.dir;
  const results: Record<
    string,
    { model: BenchModel; limit: LimitResult; naive: ContenderResult; citadel: CitadelResult }
  > = {};
  const limitsAlt = new Map<string, LimitResult & { threads: number }>();
  let api: Proc | null = null;
  let bulk: Awaited<ReturnType<typeof runBulk>> | null = null;
  try {
    // Limits first, with nothing else running.
    const limits = new Map<string, LimitResult>();
    const altThreads = o.threads === 1 ? Math.min(2, os.cpus().length) : 1;
    for (const m of models) {
      for (const threads of altThreads === o.threads ? [o.threads] : [o.threads, altThreads]) {
        say(`limit:   ${m.name}: onnxruntime alone, ${threads} thread(s), batch 1/4/8/16/32`);
        const l = await measureLimit(m, threads, [1, 4, 8, 16, 32], o.quick ? 1500 : 3000);
        if (threads === o.threads) limits.set(m.key, l);
        else limitsAlt.set(m.key, { threads, ...l });
        say(
          `limit:   ${m.name}: ${threads} thread(s): best batch ${l.bestBatch}, ${fmt(l.samplesPerSec)} samples/s (${Object.entries(
            l.byBatch,
          )
            .map(([b, r]) => `b${b}=${fmt(r)}`)
            .join(" ")})`,
        );
      }
    }
    // Publish: Citadel's manifest gets the batch size the limit found best (at least 8, so
    // dynamic batching has room when batching helps only a little).
    for (const m of models) {
      const l = limits.get(m.key);
      await fleet.publish(m.bytes, {
        name: m.name,
        version: "1",
        spec: {
          maxBatch: Math.max(8, l?.bestBatch ?? 8),
          maxQueueDelayMs: 2,
          timeoutMs: 10_000,
          executionProviders: ["cpu"],
          inputs: { [m.input]: { range: m.range, maxDim: 4096 } },
        },
      });
    }
    const TINY_WIDTH = 16;
    await fleet.publish(buildIdentityModel("float32", ["N", TINY_WIDTH]), {
      name: "tiny",
      version: "1",
      spec: { maxBatch: 64, executionProviders: ["cpu"], inputs: { x: { range: [-1, 1] } } },
    });
    const apiPort = await freePort();
    api = await startProc(
      "api",
      "api",
      apiEnv(fleet.env, apiPort, { RESULT_TTL_MS: "120000", QUEUE_TTL_MS: "600000" }),
      fleet.logDir,
      apiPort,
    );

    for (const m of models) {
      const limit = limits.get(m.key) as LimitResult;
      const pool = inputPool(m, 64);
      const maxBatch = Math.max(8, limit.bestBatch);
      const concurrency = Math.max(16, 3 * maxBatch * o.workers);
      say(`naive:   ${m.name}: BullMQ Worker + session.run per job, ${concurrency} clients`);
      const naive = await runNaive(m, o, redisUrl, dir, pool, concurrency, admin, redisPid);
      say(`naive:   ${m.name}: ${fmt(naive.jobsPerSec)} jobs/s, p50 ${fmt(naive.p50)} ms, p99 ${fmt(naive.p99)} ms`);
      say(`citadel: ${m.name}: HTTP submit → queue → worker → ?wait result, ${concurrency} clients`);
      const citadel = await runCitadel(m, o, fleet, api, pool, concurrency, admin, redisPid);
      say(
        `citadel: ${m.name}: ${fmt(citadel.samplesPerSec)} samples/s, p50 ${fmt(citadel.p50)} ms, p99 ${fmt(citadel.p99)} ms, avg batch ${fmt(citadel.avgBatch, 2)}; half load p99 overhead ${fmt(citadel.halfLoad.overheadP99, 1)} ms`,
      );
      results[m.key] = { model: m, limit, naive, citadel };
    }

    say("bulk:    POST /v1/jobs/bulk, 500 small jobs per request, 4 clients, one API process");
    bulk = await runBulk(o, api, fleet.apiKey, "tiny", TINY_WIDTH);
    say(`bulk:    ${fmt(bulk.jobsPerSec)} jobs/s accepted`);
  } finally {
    await api?.stop();
    await fleet.close();
    admin.disconnect();
    await own?.stop();
  }

  // ---- report ----
  const rows: string[][] = [
    [
      "model",
      "contender",
      "samples/s",
      "jobs/s",
      "p50 ms",
      "p99 ms",
      "avg batch",
      "RSS MB",
      "CPU cores",
      "Redis cmds/job",
    ],
  ];
  const summary: Record<string, unknown> = {};
  for (const { model: m, limit, naive, citadel } of Object.values(results)) {
    rows.push([
      m.name,
      `limit (ORT, batch ${limit.bestBatch})`,
      fmt(limit.samplesPerSec),
      "-",
      "-",
      "-",
      String(limit.bestBatch),
      "-",
      "-",
      "-",
    ]);
    rows.push([
      m.name,
      "naive BullMQ worker",
      fmt(naive.samplesPerSec),
      fmt(naive.jobsPerSec),
      fmt(naive.p50),
      fmt(naive.p99),
      "1",
      fmt(naive.rssMb),
      fmt(naive.cpuCores, 2),
      fmt(naive.redisCmdsPerJob, 1),
    ]);
    rows.push([
      m.name,
      `Citadel (${o.workers} worker)`,
      fmt(citadel.samplesPerSec),
      fmt(citadel.jobsPerSec),
      fmt(citadel.p50),
      fmt(citadel.p99),
      fmt(citadel.avgBatch, 2),
      fmt(citadel.rssMb),
      fmt(citadel.cpuCores + citadel.apiCpuCores, 2),
      fmt(citadel.redisCmdsPerJob, 1),
    ]);
    summary[m.key] = {
      model: m.name,
      limitSamplesPerSec: Math.round(limit.samplesPerSec),
      limitBestBatch: limit.bestBatch,
      limitOtherThreads: limitsAlt.has(m.key)
        ? {
            threads: limitsAlt.get(m.key)?.threads,
            samplesPerSec: Math.round(limitsAlt.get(m.key)?.samplesPerSec ?? 0),
            bestBatch: limitsAlt.get(m.key)?.bestBatch,
          }
        : null,
      limitByBatch: Object.fromEntries(Object.entries(limit.byBatch).map(([k, v]) => [k, Math.round(v)])),
      naiveJobsPerSec: Math.round(naive.jobsPerSec),
      naiveP50Ms: round1(naive.p50),
      naiveP99Ms: round1(naive.p99),
      naiveRedisCmdsPerJob: round1(naive.redisCmdsPerJob),
      naiveRssMb: Math.round(naive.rssMb),
      naiveCpuMsPerJob: naive.cpuPerJob,
      citadelCpuMsPerJob: citadel.cpuPerJob,
      citadelSamplesPerSec: Math.round(citadel.samplesPerSec),
      citadelJobsPerSec: Math.round(citadel.jobsPerSec),
      citadelP50Ms: round1(citadel.p50),
      citadelP99Ms: round1(citadel.p99),
      citadelOverheadP50Ms: round1(citadel.overheadP50),
      citadelOverheadP99Ms: round1(citadel.overheadP99),
      citadelAvgBatch: Math.round(citadel.avgBatch * 100) / 100,
      citadelFailed: citadel.failed,
      citadelFailures: citadel.failures,
      workerRssMb: Math.round(citadel.rssMb),
      workerCpuCores: round2(citadel.cpuCores),
      apiCpuCores: round2(citadel.apiCpuCores),
      redisCpuCores: round2(citadel.redisCpuCores),
      redisCmdsPerJob: round1(citadel.redisCmdsPerJob),
      redisTopPerJob: citadel.redisTop,
      halfLoad: {
        rateJobsPerSec: Math.round(citadel.halfLoad.rate),
        jobs: citadel.halfLoad.jobs,
        p50Ms: round1(citadel.halfLoad.p50),
        p99Ms: round1(citadel.halfLoad.p99),
        overheadP50Ms: round1(citadel.halfLoad.overheadP50),
        overheadP99Ms: round1(citadel.halfLoad.overheadP99),
        avgBatch: round2(citadel.halfLoad.avgBatch),
      },
      overheadOverInference: round2(1 - citadel.samplesPerSec / limit.samplesPerSec),
      citadelOverLimit: round2(citadel.samplesPerSec / limit.samplesPerSec),
      citadelOverNaive: round2(citadel.jobsPerSec / Math.max(1e-9, naive.jobsPerSec)),
      naiveOverLimit: round2(naive.samplesPerSec / limit.samplesPerSec),
    };
  }
  const widths = rows[0]?.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length))) ?? [];
  const line = (r: string[]) =>
    r.map((cell, c) => (c < 2 ? cell.padEnd(widths[c] ?? 0) : cell.padStart(widths[c] ?? 0))).join("  ");
  const out: string[] = [""];
  out.push(line(rows[0] ?? []));
  out.push(widths.map((w) => "-".repeat(w)).join("  "));
  for (const r of rows.slice(1)) out.push(line(r));
  out.push("");
  for (const { model: m, citadel } of Object.values(results)) {
    const s = summary[m.key] as Record<string, number>;
    out.push(
      `${m.name}: Citadel/limit ${s.citadelOverLimit}×, Citadel/naive ${s.citadelOverNaive}×; e2e−inference p50 ${fmt(citadel.overheadP50, 1)} ms / p99 ${fmt(citadel.overheadP99, 1)} ms under load; at half load (${fmt(citadel.halfLoad.rate)} jobs/s) p99 e2e−inference ${fmt(citadel.halfLoad.overheadP99, 1)} ms`,
    );
    out.push(`  Redis commands per job (incl. inside Lua): ${JSON.stringify(citadel.redisTop)}`);
    out.push(
      `  CPU ms per job: Citadel ${JSON.stringify(citadel.cpuPerJob)}; naive ${JSON.stringify(results[m.key]?.naive.cpuPerJob)}`,
    );
    const alt = limitsAlt.get(m.key);
    if (alt)
      out.push(`  limit with ${alt.threads} thread(s): ${fmt(alt.samplesPerSec)} samples/s at batch ${alt.bestBatch}`);
  }
  if (bulk)
    out.push(
      `bulk submit (one API process, 16-float inputs, 500/request): ${fmt(bulk.jobsPerSec)} jobs/s accepted; refused ${JSON.stringify(bulk.refused)}`,
    );
  const load1 = os.loadavg();
  out.push(
    `load average before ${load0.map((x) => x.toFixed(2)).join(" ")}, after ${load1.map((x) => x.toFixed(2)).join(" ")}; ${fmt((performance.now() - started) / 1000)} s`,
  );
  process.stdout.write(`${out.join("\n")}\n`);

  const json = {
    bench: "citadel",
    quick: o.quick,
    cores: os.cpus().length,
    threads: o.threads,
    workers: o.workers,
    loadAvgBefore: load0.map(round2),
    ...summary,
    bulkJobsPerSec: bulk ? Math.round(bulk.jobsPerSec) : null,
    bulkApiCpuCores: bulk ? round2(bulk.apiCpuCores) : null,
    seconds: Math.round((performance.now() - started) / 1000),
  };
  if (o.svg && Object.keys(results).length > 0) {
    const file = path.join(repoRoot, "docs", "perf-bench.svg");
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(
      file,
      renderChart(
        Object.values(results).map(({ model: m, limit, naive, citadel }) => ({
          label: m.name,
          limit: limit.samplesPerSec,
          naive: naive.samplesPerSec,
          citadel: citadel.samplesPerSec,
        })),
        `${os.cpus().length} cores, ${o.threads} intra-op threads each, ${o.workers} Citadel worker(s)${o.quick ? ", --quick" : ""}`,
      ),
    );
    process.stdout.write(`chart: ${path.relative(process.cwd(), file)}\n`);
  }
  process.stdout.write(`${JSON.stringify(json)}\n`);
  return 0;
}

const round1 = (n: number) => Math.round(n * 10) / 10;
const round2 = (n: number) => Math.round(n * 100) / 100;

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
