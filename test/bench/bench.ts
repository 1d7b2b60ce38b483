/**
 * Citadel against the onnxruntime limit and a naive BullMQ worker, in one run, on
 * the same machine, models, inputs and intra-op thread count.
 *
 *   npm run bench                 # full (~15 min on 2 cores: three repeats of everything)
 *   npm run bench -- --quick      # ~5 min, shorter windows, one repeat
 *   node --conditions=@citadel/source --import tsx test/bench/bench.ts [--quick] [--models heavy,ocr] [--threads 2]
 *        [--workers 1] [--seconds 20] [--repeats 3] [--capacity-jobs 20000] [--no-svg]
 *        [--only models,bulk,capacity,cold-start,cluster] [--cold-keys vault|local] [--cold-form source|dist]
 *        [--cluster-jobs 3000] [--cluster-clients 32]
 *
 * Rows, per model:
 *   limit          onnxruntime alone in a loop, batch 1/4/8/16/32 (samples/s);
 *   naive          a plain BullMQ Worker calling session.run per job (contenders.ts);
 *   Citadel JSON   the API and worker(s) as real processes, JSON/base64 bodies, submit
 *                  and wait in one request (POST /v1/jobs?wait=);
 *   Citadel binary the same with binary tensor bodies (reported as unavailable when
 *                  the API refuses them);
 *   half load      naive and Citadel in an open loop at the same rate: half the slowest
 *                  contender's closed-loop jobs/s; `--repeats` windows each, interleaved,
 *                  the one with the median p99 of e2e − inference kept (a p99 of one
 *                  12 s window moves with a single stall of this VM). Beside them, the
 *                  floor: a bare BullMQ round trip at the same rate (add, a no-op
 *                  processor in its own process, the completed event), no HTTP, no model.
 * Plus: jobs of 16 samples each (one model, samples/s against the limit), bulk submit,
 * and worker capacity on a no-op model against bare BullMQ Workers (capacity.ts).
 * Last, cold start (cold-start.ts): one job on an empty queue, a fresh worker process
 * started for it as KEDA would, submit → result split into its phases, beside the
 * warm latency. `--only cold-start` runs that row alone.
 * Cluster capacity (cluster.ts, `--only cluster`): a local 3+3 Redis Cluster, the fleet
 * on it, per shard (queue, tenant, deployment) Redis commands and CPU per job and the
 * jobs/s one shard carries (derived); docs/capacity.md is written from it.
 *
 * Fairness: every body is built before measuring; every contender gets the same
 * warm-up, clients and windows, is started fresh for each measurement, and is measured
 * `--repeats` times (interleaved with the others) with the median run kept. Latency
 * counts unfinished jobs (measure.ts).
 *
 * Uses a private redis-server on a free port when one can be started (so that
 * `INFO commandstats` counts only this benchmark), else REDIS_URL.
 * Prints a table, the targets of issue 11 with pass/miss, and, last, one line of JSON.
 * Writes docs/perf-bench.svg.
 */
import type { ChildProcess } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { AppForm } from "@citadel/cli/fleet";
import { OCR_CLS_PATH } from "@citadel/cli/sample-models";
import { buildHeavyConvNet, buildIdentityModel } from "@citadel/onnx";
import { queueName, queuePrefix } from "@citadel/queue";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import * as ort from "onnxruntime-node";
import { type DrainResult, measureDrain } from "./capacity.js";
import { type ClusterReport, clusterLines, runClusterBench } from "./cluster.js";
import {
  type ColdKeys,
  type ColdReport,
  coldJson,
  coldLines,
  coldTargets,
  DEFAULT_COLD_FORM,
  runColdStart,
} from "./cold-start.js";
import {
  binaryRefusal,
  type Contender,
  citadelContender,
  citadelWorkerProbes,
  naiveContender,
  samplesPerRun,
  sharedProbes,
  spawnNaiveWorker,
  startCitadelWorkers,
} from "./contenders.js";
import {
  apiEnv,
  b64,
  Client,
  freePort,
  haveRedisServer,
  mean,
  type OwnRedis,
  type Proc,
  randomInput,
  redisPidOf,
  repoRoot,
  SPINNING,
  say,
  setupFleet,
  sleep,
  spawnBusyLoop,
  startOwnRedis,
  startProc,
} from "./harness.js";
import { manifestBatches } from "./manifest-batches.js";
import { closedLoop, type LoadResult, median, medianRun, openLoop, percentile, Sampler, Window } from "./measure.js";
import { renderChart } from "./svg.js";
import { passes, type Target, targetLines } from "./targets.js";
import { naiveJobData, type PreparedBody, prepareBody, stackSamples, type Wire } from "./wire.js";

// ---------------------------------------------------------------------------------
// options
// ---------------------------------------------------------------------------------

interface Options {
  quick: boolean;
  models: string[];
  threads: number;
  workers: number;
  seconds: number;
  repeats: number;
  capacityJobs: number;
  svg: boolean;
  /** Rows to run: every one by default. */
  only: Set<Row>;
  coldKeys: ColdKeys;
  coldForm: AppForm;
  clusterJobs: number;
  clusterClients: number;
}

const ROWS = ["models", "bulk", "capacity", "cold-start", "cluster"] as const;
type Row = (typeof ROWS)[number];

function parseArgs(argv: string[]): Options {
  const o: Options = {
    quick: false,
    models: ["heavy", "ocr"],
    threads: 1,
    workers: 1,
    seconds: 0,
    repeats: 0,
    capacityJobs: 0,
    svg: true,
    only: new Set(ROWS),
    coldKeys: "vault",
    coldForm: DEFAULT_COLD_FORM,
    clusterJobs: 0,
    clusterClients: 32,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i] ?? "";
    if (a === "--quick") o.quick = true;
    else if (a === "--models") o.models = next().split(",");
    else if (a === "--threads") o.threads = Number(next());
    else if (a === "--workers") o.workers = Number(next());
    else if (a === "--seconds") o.seconds = Number(next());
    else if (a === "--repeats") o.repeats = Number(next());
    else if (a === "--capacity-jobs") o.capacityJobs = Number(next());
    else if (a === "--no-svg") o.svg = false;
    else if (a === "--cluster-jobs") o.clusterJobs = Number(next());
    else if (a === "--cluster-clients") o.clusterClients = Number(next());
    else if (a === "--only") {
      const rows = next().split(",");
      const bad = rows.filter((r) => !(ROWS as readonly string[]).includes(r));
      if (bad.length) throw new Error(`--only: unknown row(s) ${bad.join(", ")}; rows: ${ROWS.join(", ")}`);
      o.only = new Set(rows as Row[]);
    } else if (a === "--cold-keys") {
      const k = next();
      if (k !== "vault" && k !== "local") throw new Error("--cold-keys: vault or local");
      o.coldKeys = k;
    } else if (a === "--cold-form") {
      const f = next();
      if (f !== "source" && f !== "dist") throw new Error("--cold-form: source or dist");
      o.coldForm = f;
    } else if (a === "--help" || a === "-h") {
      process.stdout.write(
        "usage: bench.ts [--quick] [--models heavy,ocr] [--threads N] [--workers N] [--seconds S] [--repeats N] [--capacity-jobs N] [--no-svg]\n" +
          `                [--only ${ROWS.join(",")}] [--cold-keys vault|local] [--cold-form source|dist]\n` +
          "                [--cluster-jobs N] [--cluster-clients N]\n",
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  if (o.seconds === 0) o.seconds = o.quick ? 8 : 20;
  if (o.repeats === 0) o.repeats = o.quick ? 1 : 3;
  if (o.capacityJobs === 0) o.capacityJobs = o.quick ? 5_000 : 20_000;
  if (o.clusterJobs === 0) o.clusterJobs = o.quick ? 1_000 : 3_000;
  return o;
}

/** The same for every contender: warm-up before each closed or open loop, and the half-load window. */
const warmupMs = (o: Options) => (o.quick ? 2000 : 4000);
const halfLoadMs = (o: Options) => Math.min(o.quick ? 6 : 12, Math.max(3, o.seconds)) * 1000;

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

/** A pool of distinct 1-sample inputs, reused round-robin by every contender. */
function inputPool(m: BenchModel, n: number): Float32Array[] {
  return Array.from({ length: n }, (_, i) => randomInput(perSample(m), 1000 + i));
}

/** Samples per job in the 16-sample row; the bench's manifests take at least this many. */
const MULTI_SAMPLES = 16;
/** The no-op model of the capacity row: identity over x[N,16], batches of up to 64 jobs. */
const NOOP = { name: "noop", width: 16, maxBatch: 64 };

// ---------------------------------------------------------------------------------
// limit: onnxruntime alone
// ---------------------------------------------------------------------------------

interface LimitResult {
  bestBatch: number;
  samplesPerSec: number;
  msPerSample: number;
  byBatch: Record<number, number>;
  /**
   * At its best batch with every other core kept busy: context, not a target's baseline.
   * The limit itself runs with the rest of the machine idle, which no fleet contender
   * does (busy-neighbour.ts: heavy conv 7.7% slower per sample beside a busy core).
   */
  busy?: { neighbours: number; samplesPerSec: number };
}

/**
 * `passes` interleaved passes over the batch sizes; the median pass per batch size is
 * kept. With `neighbours`, that many spinning processes run beside it throughout.
 */
async function measureLimit(
  m: BenchModel,
  threads: number,
  batches: number[],
  ms: number,
  passes: number,
  neighbours = 0,
): Promise<LimitResult> {
  const session = await ort.InferenceSession.create(m.bytes, {
    executionProviders: ["cpu"],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  });
  const runs: Record<number, number[]> = {};
  const spinners: ChildProcess[] = Array.from({ length: neighbours }, () =>
    spawnBusyLoop(SPINNING.setup, SPINNING.turn),
  );
  try {
    if (neighbours > 0) await sleep(300);
    for (let pass = 0; pass < passes; pass++) {
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
        runs[b] = [...(runs[b] ?? []), rate];
      }
    }
  } finally {
    for (const c of spinners) c.kill();
    await session.release();
  }
  const byBatch: Record<number, number> = Object.fromEntries(batches.map((b) => [b, median(runs[b] ?? [])]));
  let bestBatch = batches[0] ?? 1;
  for (const b of batches) if ((byBatch[b] ?? 0) > (byBatch[bestBatch] ?? 0)) bestBatch = b;
  const samplesPerSec = byBatch[bestBatch] ?? 0;
  return { bestBatch, samplesPerSec, msPerSample: 1000 / samplesPerSec, byBatch };
}

// ---------------------------------------------------------------------------------
// one measurement of a contender
// ---------------------------------------------------------------------------------

interface RunSummary {
  load: LoadResult;
  p50: number;
  p99: number;
  overheadP50: number;
  overheadP99: number;
  avgBatch: number;
  rssMb: number;
  /** Cores busy: the worker process(es), the API, Redis. */
  workerCores: number;
  apiCores: number;
  redisCores: number;
  cpuPerJob: Record<string, number>;
  redisCmdsPerJob: number;
  redisTop: Record<string, number>;
}

/** A percentile, NaN (printed "-") when there is no sample: 0 would read as a measurement. */
const pct = (sorted: readonly number[], p: number) => (sorted.length ? percentile(sorted, p) : Number.NaN);

function summarize(load: LoadResult, w: Window | null, perRun?: number): RunSummary {
  const redis = w?.redis(load.jobs) ?? { perJob: Number.NaN, top: {} };
  return {
    load,
    p50: pct(load.latencies, 50),
    p99: pct(load.latencies, 99),
    overheadP50: pct(load.overheads, 50),
    overheadP99: pct(load.overheads, 99),
    // Samples per run: the workers' own count where they report it, else the jobs' (naive: 1 per run).
    avgBatch: perRun ?? (load.batchSizes.length ? mean(load.batchSizes) : Number.NaN),
    rssMb: w?.maxRssMb(["worker", "workerMain"]) ?? Number.NaN,
    workerCores: w?.cores(["worker", "workerMain"]) ?? Number.NaN,
    apiCores: w?.cores(["api"]) ?? 0,
    redisCores: w?.cores(["redis"]) ?? 0,
    cpuPerJob: w?.cpuPerJob(load.jobs) ?? {},
    redisCmdsPerJob: redis.perJob,
    redisTop: redis.top,
  };
}

async function closedRun(c: Contender, concurrency: number, o: Options, admin: Redis): Promise<RunSummary> {
  const running = await c.start();
  const w = new Window(running.probes, admin);
  try {
    const load = await closedLoop(concurrency, warmupMs(o), o.seconds * 1000, running.one, (phase) =>
      phase === "start" ? w.start() : w.stop(),
    );
    return summarize(load, w, await running.samplesPerRun?.());
  } finally {
    await running.stop();
  }
}

async function openRun(c: Contender, rate: number, o: Options): Promise<RunSummary> {
  const running = await c.start();
  try {
    const load = await openLoop(rate, warmupMs(o), halfLoadMs(o), running.one);
    return summarize(load, null, await running.samplesPerRun?.());
  } finally {
    await running.stop();
  }
}

/**
 * Every contender in `o.repeats` half-load windows at `rate`, interleaved; the run with
 * the median p99 of e2e − inference of each kept.
 */
async function halfLoadInterleaved(
  contenders: readonly Contender[],
  rate: number,
  o: Options,
): Promise<{ median: RunSummary; runs: number[] }[]> {
  const runs: RunSummary[][] = contenders.map(() => []);
  for (let r = 0; r < o.repeats; r++) {
    for (const [k, c] of contenders.entries()) {
      const s = await openRun(c, rate, o);
      say(`${c.label}: half load ${r + 1}/${o.repeats}: p99 e2e−inference ${fmt(s.overheadP99, 1)} ms`);
      runs[k]?.push(s);
    }
  }
  return runs.map((rs) => ({
    median: medianRun(rs, (s) => s.overheadP99),
    runs: rs.map((s) => round1(s.overheadP99)),
  }));
}

/** Every contender measured `o.repeats` times, interleaved; the median run (by jobs/s) of each kept. */
async function measureInterleaved(
  contenders: readonly Contender[],
  concurrency: number,
  o: Options,
  admin: Redis,
): Promise<{ median: RunSummary; runs: number[] }[]> {
  const runs: RunSummary[][] = contenders.map(() => []);
  for (let r = 0; r < o.repeats; r++) {
    for (const [k, c] of contenders.entries()) {
      say(`${c.label}: run ${r + 1}/${o.repeats}, ${concurrency} clients`);
      const s = await closedRun(c, concurrency, o, admin);
      say(
        `${c.label}: ${fmt(s.load.jobsPerSec)} jobs/s, p50 ${fmt(s.p50)} ms, p99 ${fmt(s.p99)} ms` +
          (s.load.failed ? `, failed ${JSON.stringify(s.load.failures)}` : "") +
          (s.load.unfinished ? `, unfinished ${s.load.unfinished}` : ""),
      );
      runs[k]?.push(s);
    }
  }
  return runs.map((rs) => ({
    median: medianRun(rs, (s) => s.load.jobsPerSec),
    runs: rs.map((s) => round1(s.load.jobsPerSec)),
  }));
}

// ---------------------------------------------------------------------------------
// bulk submit
// ---------------------------------------------------------------------------------

function bulkBody(model: string, width: number, count: number): string {
  const jobs = Array.from({ length: count }, (_, i) => ({
    model,
    inputs: { x: { dtype: "float32", shape: [1, width], data: b64(randomInput(width, i)) } },
  }));
  return JSON.stringify({ jobs });
}

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
  const body = bulkBody(model, width, per);
  const refused: Record<string, number> = {};
  let accepted = 0;
  let requests = 0;
  const warm = performance.now() + 1500;
  const end = warm + (o.quick ? 4000 : 8000);
  const sampler = new Sampler(api.pid);
  const loop = async () => {
    while (performance.now() < end) {
      const started = performance.now();
      const r = await client.bulk(body);
      if (started < warm || performance.now() > end) continue;
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
  return { jobsPerSec: accepted / ((end - warm) / 1000), requests, accepted, refused, apiCpuCores: sampler.cpuShare };
}

// ---------------------------------------------------------------------------------
// worker capacity on a no-op model
// ---------------------------------------------------------------------------------

interface CapacityResult {
  jobs: number;
  citadel: DrainResult;
  bareC1: DrainResult;
  bareC50: DrainResult;
  runs: { citadel: number[]; bareC1: number[]; bareC50: number[] };
}

/** Pre-fills Citadel's no-op queue through the API (bulk submit), exactly `total` jobs. */
async function prefillCitadel(client: Client, total: number): Promise<void> {
  const per = 500;
  const full = bulkBody(NOOP.name, NOOP.width, per);
  let accepted = 0;
  for (let left = total; left > 0; left -= per) {
    const r = await client.bulk(left >= per ? full : bulkBody(NOOP.name, NOOP.width, left));
    accepted += r.results.filter((j) => j.id).length;
  }
  if (accepted !== total) throw new Error(`capacity: the API accepted ${accepted} of ${total} pre-filled jobs`);
}

async function prefillBare(queue: Queue, total: number): Promise<void> {
  const data = naiveJobData([{ name: "x", shape: [1, NOOP.width], data: randomInput(NOOP.width, 7) }]);
  for (let left = total; left > 0; left -= 1000) {
    await queue.addBulk(Array.from({ length: Math.min(1000, left) }, () => ({ name: "noop", data })));
  }
}

async function runCapacity(
  o: Options,
  fleet: Awaited<ReturnType<typeof setupFleet>>,
  api: Proc,
  redisUrl: string,
  admin: Redis,
  redisPid: number,
): Promise<CapacityResult> {
  const total = o.capacityJobs;
  const capMs = o.seconds * 1000;
  const connection = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const citadelQueue = new Queue(queueName(NOOP.name), {
    connection,
    prefix: queuePrefix(fleet.prefix, NOOP.name),
  });
  const bareQueue = new Queue("bare-noop", { connection, prefix: `{bare-${process.pid}}` });
  const client = new Client(api.url, fleet.apiKey);
  const runs: { citadel: DrainResult[]; bareC1: DrainResult[]; bareC50: DrainResult[] } = {
    citadel: [],
    bareC1: [],
    bareC50: [],
  };
  const bare = async (concurrency: number) => {
    await prefillBare(bareQueue, total);
    const r = await measureDrain({
      queue: bareQueue,
      total,
      capMs,
      admin,
      start: async () => {
        const w = await spawnNaiveWorker(redisUrl, {
          NAIVE_QUEUE: bareQueue.name,
          NAIVE_PREFIX: `{bare-${process.pid}}`,
          NAIVE_NOOP: "1",
          NAIVE_CONCURRENCY: String(concurrency),
        });
        return { probes: [{ key: "worker", pid: w.pid }, ...sharedProbes(redisPid)], stop: () => w.stop() };
      },
    });
    await bareQueue.obliterate({ force: true });
    return r;
  };
  try {
    for (let r = 0; r < o.repeats; r++) {
      say(`capacity: run ${r + 1}/${o.repeats}: one Citadel worker drains ${total} pre-filled no-op jobs`);
      await prefillCitadel(client, total);
      const c = await measureDrain({
        queue: citadelQueue,
        total,
        capMs,
        admin,
        start: async () => {
          const workers = await startCitadelWorkers(fleet, NOOP.name, 1, o.threads, "capacity");
          return {
            probes: [...citadelWorkerProbes(workers), ...sharedProbes(redisPid)],
            stop: async () => {
              const perRun = await samplesPerRun(workers).catch(() => Number.NaN);
              say(`capacity: Citadel worker ran ${fmt(perRun)} jobs per run`);
              await Promise.all(workers.map((w) => w.stop()));
            },
          };
        },
      });
      // Jobs left when the time cap ended the drain: out of the next run's way.
      await citadelQueue.obliterate({ force: true });
      runs.citadel.push(c);
      say(`capacity: Citadel ${fmt(c.jobsPerSec)} jobs/s${c.reachedEnd ? "" : " (time cap reached)"}`);
      for (const [conc, into] of [
        [1, runs.bareC1],
        [50, runs.bareC50],
      ] as const) {
        const b = await bare(conc);
        into.push(b);
        say(`capacity: bare BullMQ Worker, concurrency ${conc}: ${fmt(b.jobsPerSec)} jobs/s`);
      }
    }
  } finally {
    await citadelQueue.close();
    await bareQueue.close();
    connection.disconnect();
  }
  const rate = (d: DrainResult) => d.jobsPerSec;
  const list = (ds: DrainResult[]) => ds.map((d) => Math.round(d.jobsPerSec));
  return {
    jobs: total,
    citadel: medianRun(runs.citadel, rate),
    bareC1: medianRun(runs.bareC1, rate),
    bareC50: medianRun(runs.bareC50, rate),
    runs: { citadel: list(runs.citadel), bareC1: list(runs.bareC1), bareC50: list(runs.bareC50) },
  };
}

// ---------------------------------------------------------------------------------
// per model
// ---------------------------------------------------------------------------------

interface ModelResult {
  model: BenchModel;
  limit: LimitResult;
  naive: RunSummary;
  citadel: RunSummary;
  binary: RunSummary | { unavailable: string };
  runs: { naive: number[]; citadel: number[]; binary: number[] };
  half: {
    rate: number;
    naive: RunSummary;
    citadel: RunSummary;
    binary: RunSummary | null;
    /** A bare BullMQ round trip at the same rate: what queueing through Redis alone costs on this machine. */
    floor: RunSummary;
    /** p99 of e2e − inference of each repeat, per contender (ms). */
    p99Runs: { naive: number[]; citadel: number[]; binary: number[]; floor: number[] };
  };
  /** `limitAfter`: onnxruntime alone at the limit's best batch, measured again right after the row (a VM's speed drifts within a run). */
  multi: {
    wire: Wire;
    run: RunSummary;
    runs: number[];
    limitAfter: number;
    /** The naive worker on the same 16-sample jobs, measured interleaved with Citadel. */
    naive: RunSummary;
    naiveRuns: number[];
  } | null;
}

const isRun = (x: RunSummary | { unavailable: string }): x is RunSummary => "load" in x;

async function runModel(
  m: BenchModel,
  limit: LimitResult,
  multi: boolean,
  o: Options,
  ctx: {
    fleet: Awaited<ReturnType<typeof setupFleet>>;
    api: Proc;
    admin: Redis;
    redisUrl: string;
    redisPid: number;
    dir: string;
  },
): Promise<ModelResult> {
  const pool = inputPool(m, 64);
  const maxBatch = manifestMaxBatch(limit);
  const concurrency = Math.max(16, 3 * maxBatch * o.workers);
  const one = (i: number) => [{ name: m.input, shape: [1, ...m.dims], data: pool[i] as Float32Array }];
  const bodiesOf = (wire: Wire) => pool.map((_, i) => prepareBody(wire, m.name, one(i)));
  const modelFile = path.join(ctx.dir, `${m.name}.onnx`);
  writeFileSync(modelFile, m.bytes, { mode: 0o600 });

  const naive = naiveContender({
    label: `naive:   ${m.name}`,
    redisUrl: ctx.redisUrl,
    redisPid: ctx.redisPid,
    modelFile,
    queueName: `naive-${m.name}`,
    threads: o.threads,
    data: pool.map((_, i) => naiveJobData(one(i))),
    concurrency,
  });
  const citadelOf = (bodies: PreparedBody[], samplesPerJob: number, label: string) =>
    citadelContender({
      label,
      fleet: ctx.fleet,
      api: ctx.api,
      redisPid: ctx.redisPid,
      model: m.name,
      workers: o.workers,
      threads: o.threads,
      bodies,
      samplesPerJob,
    });
  const json = citadelOf(bodiesOf("json"), 1, `citadel: ${m.name} (JSON/base64)`);
  const binaryBodies = bodiesOf("binary");
  const refusal = await binaryRefusal(ctx.api, ctx.fleet.apiKey, binaryBodies[0] as PreparedBody);
  if (refusal) say(`citadel: ${m.name} (binary): unavailable, the API answers ${refusal}`);
  const binary = refusal ? null : citadelOf(binaryBodies, 1, `citadel: ${m.name} (binary)`);

  const [n, j, b] = await measureInterleaved(binary ? [naive, json, binary] : [naive, json], concurrency, o, ctx.admin);
  if (!n || !j) throw new Error("a contender returned no measurement");

  // Half load: every contender in an open loop at the same rate, half the slowest one's jobs/s.
  const rate = Math.max(1, Math.min(...[n, j, b].flatMap((x) => (x ? [x.median.load.jobsPerSec] : []))) / 2);
  say(`half load: ${m.name}: ${fmt(rate, 1)} jobs/s for every contender`);
  const floor = naiveContender({
    label: `floor:   bare BullMQ round trip (${m.name}'s rate)`,
    redisUrl: ctx.redisUrl,
    redisPid: ctx.redisPid,
    modelFile: null,
    queueName: `floor-${m.name}`,
    threads: o.threads,
    data: [{ inputs: {} }],
    concurrency,
  });
  const [hf, hn, hj, hb] = await halfLoadInterleaved(
    binary ? [floor, naive, json, binary] : [floor, naive, json],
    rate,
    o,
  );
  if (!hf || !hn || !hj) throw new Error("a contender returned no half-load measurement");
  const half = {
    rate,
    naive: hn.median,
    citadel: hj.median,
    binary: hb?.median ?? null,
    floor: hf.median,
    p99Runs: { naive: hn.runs, citadel: hj.runs, binary: hb?.runs ?? [], floor: hf.runs },
  };
  say(
    `half load: ${m.name}: p99 e2e−inference naive ${fmt(half.naive.overheadP99, 1)} ms, Citadel JSON ${fmt(half.citadel.overheadP99, 1)} ms` +
      (half.binary ? `, binary ${fmt(half.binary.overheadP99, 1)} ms` : "") +
      `; floor (bare BullMQ round trip) ${fmt(half.floor.overheadP99, 1)} ms`,
  );

  let multiResult: ModelResult["multi"] = null;
  if (multi) {
    const wire: Wire = binary ? "binary" : "json";
    // The same 16-sample inputs for both contenders.
    const inputs = Array.from({ length: pool.length / MULTI_SAMPLES }, (_, k) => [
      {
        name: m.input,
        shape: [MULTI_SAMPLES, ...m.dims],
        data: stackSamples(pool, k * MULTI_SAMPLES, MULTI_SAMPLES),
      },
    ]);
    const bodies = inputs.map((x) => prepareBody(wire, m.name, x));
    const c = citadelOf(bodies, MULTI_SAMPLES, `citadel: ${m.name} (${MULTI_SAMPLES}-sample jobs, ${wire})`);
    const clients = Math.max(4, 3 * Math.ceil(maxBatch / MULTI_SAMPLES) * o.workers);
    // The naive worker on the same jobs (one session.run of 16 samples each), beside it:
    // what a plain queue costs on jobs this large, on the same cores.
    const naiveMulti = naiveContender({
      label: `naive:   ${m.name} (${MULTI_SAMPLES}-sample jobs)`,
      redisUrl: ctx.redisUrl,
      redisPid: ctx.redisPid,
      modelFile,
      queueName: `naive-${m.name}-${MULTI_SAMPLES}`,
      threads: o.threads,
      data: inputs.map(naiveJobData),
      concurrency: clients,
      samplesPerJob: MULTI_SAMPLES,
    });
    const [rn, r] = await measureInterleaved([naiveMulti, c], clients, o, ctx.admin);
    // The limit was measured minutes earlier; on a VM whose speed drifts, say what it is now too.
    const after = await measureLimit(m, o.threads, [limit.bestBatch], o.quick ? 1500 : 3000, o.repeats);
    if (r && rn)
      multiResult = {
        wire,
        run: r.median,
        runs: r.runs,
        limitAfter: after.samplesPerSec,
        naive: rn.median,
        naiveRuns: rn.runs,
      };
  }
  return {
    model: m,
    limit,
    naive: n.median,
    citadel: j.median,
    binary: b ? b.median : { unavailable: refusal ?? "no measurement" },
    runs: { naive: n.runs, citadel: j.runs, binary: b?.runs ?? [] },
    half,
    multi: multiResult,
  };
}

/** Citadel's manifest batch sizes from the limit (manifest-batches.ts); onnxruntime alone is quoted at its best batch. */
const manifestMaxBatch = (l: LimitResult) => manifestBatches(l, MULTI_SAMPLES).maxBatch;

// ---------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------

const fmt = (n: number, d = 0) => (Number.isFinite(n) ? n.toFixed(d) : "-");
const round1 = (n: number) => Math.round(n * 10) / 10;
const round2 = (n: number) => Math.round(n * 100) / 100;

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const started = performance.now();
  const load0 = os.loadavg();
  say(
    `bench: ${o.quick ? "quick" : "full"}; ${os.cpus().length} cores; load avg ${load0.map((x) => x.toFixed(2)).join(" ")}`,
  );
  say(`bench: onnxruntime intra-op threads ${o.threads} in every contender; ${o.workers} Citadel worker(s)`);
  say(
    `bench: ${o.repeats} measurement(s) per contender${o.repeats >= 3 ? ", median kept" : o.repeats === 1 ? " (not a median: one repeat)" : ", lower median kept"}; ${o.seconds} s windows after ${warmupMs(o) / 1000} s warm-ups`,
  );

  let own: OwnRedis | null = null;
  let redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
  if (haveRedisServer()) {
    own = await startOwnRedis();
    redisUrl = own.url;
    say(`bench: private redis-server at ${redisUrl} (commandstats count only this benchmark)`);
  } else say(`bench: using REDIS_URL ${redisUrl}; Redis command counts include other clients`);
  const admin = new Redis(redisUrl);
  const redisPid = await redisPidOf(admin);
  const models = benchModels(o.models);
  const fleet = await setupFleet({ redisUrl, prefix: "{bench}" });
  const results: Record<string, ModelResult> = {};
  const limitsAlt = new Map<string, LimitResult & { threads: number }>();
  let api: Proc | null = null;
  let bulk: Awaited<ReturnType<typeof runBulk>> | null = null;
  let capacity: CapacityResult | null = null;
  let cold: ColdReport | null = null;
  let cluster: ClusterReport | null = null;
  let clusterError: string | null = null;
  const row = (r: Row) => o.only.has(r);
  try {
    // Limits first, with nothing else running.
    const limits = new Map<string, LimitResult>();
    const altThreads = o.threads === 1 ? Math.min(2, os.cpus().length) : 1;
    for (const m of row("models") ? models : []) {
      for (const threads of altThreads === o.threads ? [o.threads] : [o.threads, altThreads]) {
        say(`limit:   ${m.name}: onnxruntime alone, ${threads} thread(s), batch 1/4/8/16/32`);
        const l = await measureLimit(m, threads, [1, 4, 8, 16, 32], o.quick ? 1500 : 3000, o.repeats);
        say(
          `limit:   ${m.name}: ${threads} thread(s): best batch ${l.bestBatch}, ${fmt(l.samplesPerSec)} samples/s (${Object.entries(
            l.byBatch,
          )
            .map(([b, r]) => `b${b}=${fmt(r)}`)
            .join(" ")})`,
        );
        if (threads !== o.threads) {
          limitsAlt.set(m.key, { threads, ...l });
          continue;
        }
        // Every fleet contender runs with the machine's other cores busy; the limit does not.
        const neighbours = os.cpus().length - threads;
        if (neighbours > 0) {
          const b = await measureLimit(m, threads, [l.bestBatch], o.quick ? 1500 : 3000, o.repeats, neighbours);
          l.busy = { neighbours, samplesPerSec: b.samplesPerSec };
          say(
            `limit:   ${m.name}: ${threads} thread(s) beside ${neighbours} busy core(s): ${fmt(b.samplesPerSec)} samples/s at batch ${l.bestBatch} (${fmt((b.samplesPerSec / l.samplesPerSec - 1) * 100, 1)}% against idle)`,
          );
        }
        limits.set(m.key, l);
      }
    }
    for (const m of row("models") ? models : []) {
      await fleet.publish(m.bytes, {
        name: m.name,
        version: "1",
        spec: {
          ...manifestBatches(limits.get(m.key) as LimitResult, MULTI_SAMPLES),
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
    await fleet.publish(buildIdentityModel("float32", ["N", NOOP.width]), {
      name: NOOP.name,
      version: "1",
      spec: {
        maxBatch: NOOP.maxBatch,
        maxQueueDelayMs: 0,
        executionProviders: ["cpu"],
        inputs: { x: { range: [-1, 1] } },
      },
    });
    if (row("models") || row("bulk") || row("capacity")) {
      const apiPort = await freePort();
      api = await startProc(
        "api",
        "api",
        apiEnv(fleet.env, apiPort, { RESULT_TTL_MS: "120000", QUEUE_TTL_MS: "600000" }),
        fleet.logDir,
        apiPort,
      );
    }

    // The 16-sample row runs on one model: PaddleOCR when it is in the run (its inputs
    // are the large ones the data plane is about), else the first.
    const multiKey = models.some((m) => m.key === "ocr") ? "ocr" : models[0]?.key;
    const modelsApi = row("models") ? api : null;
    if (modelsApi)
      for (const m of models) {
        results[m.key] = await runModel(m, limits.get(m.key) as LimitResult, m.key === multiKey, o, {
          fleet,
          api: modelsApi,
          admin,
          redisUrl,
          redisPid,
          dir: fleet.dir,
        });
      }

    if (api && row("bulk")) {
      say("bulk:    POST /v1/jobs/bulk, 500 small jobs per request, 4 clients, one API process");
      bulk = await runBulk(o, api, fleet.apiKey, "tiny", TINY_WIDTH);
      say(`bulk:    ${fmt(bulk.jobsPerSec)} jobs/s accepted`);
    }

    if (api && row("capacity")) capacity = await runCapacity(o, fleet, api, redisUrl, admin, redisPid);

    // Its own Redis (a cluster) and fleet: the single Redis's API stops first.
    if (row("cluster")) {
      await api?.stop();
      api = null;
      try {
        cluster = await runClusterBench({
          jobs: o.clusterJobs,
          repeats: o.repeats,
          clients: o.clusterClients,
          utilisation: 0.7,
        });
      } catch (err) {
        // Asked for alone, its failure is the run's; in a full run the other rows stand.
        if (o.only.size === 1) throw err;
        clusterError = err instanceof Error ? err.message : String(err);
        say(`cluster: row not measured: ${clusterError}`);
      }
    }

    // Last: nothing else of ours running while a worker starts from zero.
    if (row("cold-start")) {
      await api?.stop();
      api = null;
      cold = await runColdStart(redisUrl, models, o.coldKeys, {
        repeats: o.repeats,
        threads: o.threads,
        warmJobs: o.quick ? 5 : 10,
        form: o.coldForm,
      });
    }
  } finally {
    await api?.stop();
    await fleet.close();
    admin.disconnect();
    await own?.close();
  }
  report(o, results, limitsAlt, bulk, capacity, cold, cluster ?? clusterError, load0, started);
  return 0;
}

// ---------------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------------

function runJson(s: RunSummary) {
  return {
    jobsPerSec: Math.round(s.load.jobsPerSec),
    samplesPerSec: Math.round(s.load.samplesPerSec),
    p50Ms: round1(s.p50),
    p99Ms: round1(s.p99),
    overheadP50Ms: round1(s.overheadP50),
    overheadP99Ms: round1(s.overheadP99),
    avgBatch: round2(s.avgBatch),
    failed: s.load.failed,
    failures: s.load.failures,
    unfinished: s.load.unfinished,
    rssMb: Math.round(s.rssMb),
    cpuMsPerJob: s.cpuPerJob,
    redisCmdsPerJob: round1(s.redisCmdsPerJob),
    redisTopPerJob: s.redisTop,
  };
}

function halfJson(rate: number, s: RunSummary, p99Runs: number[]) {
  return {
    rateJobsPerSec: Math.round(rate),
    jobs: s.load.jobs,
    failed: s.load.failed,
    unfinished: s.load.unfinished,
    p50Ms: round1(s.p50),
    p99Ms: round1(s.p99),
    overheadP50Ms: round1(s.overheadP50),
    overheadP99Ms: round1(s.overheadP99),
    overheadP99MsRuns: p99Runs,
    avgBatch: round2(s.avgBatch),
  };
}

function drainJson(d: DrainResult) {
  return {
    jobsPerSec: Math.round(d.jobsPerSec),
    jobs: d.jobs,
    seconds: round2(d.seconds),
    reachedEnd: d.reachedEnd,
    cpuMsPerJob: d.cpuPerJob,
    redisCmdsPerJob: round1(d.redisCmdsPerJob),
    redisTopPerJob: d.redisTop,
  };
}

/** Citadel's best wire for a model: binary when the API takes it. */
function bestCitadel(r: ModelResult): { wire: Wire; run: RunSummary; half: RunSummary } {
  return isRun(r.binary) && r.half.binary
    ? { wire: "binary", run: r.binary, half: r.half.binary }
    : { wire: "json", run: r.citadel, half: r.half.citadel };
}

/** A target's note: the same ratio against onnxruntime alone beside busy cores (context; the verdict is against the limit). */
function besideBusy(limit: LimitResult, samplesPerSec: number): { note?: string } {
  const busy = limit.busy;
  if (!busy) return {};
  const r = samplesPerSec / Math.max(1e-9, busy.samplesPerSec);
  return { note: `against onnxruntime alone beside ${busy.neighbours} busy core(s), for context: ${r.toFixed(2)}×` };
}

function collectTargets(results: Record<string, ModelResult>, capacity: CapacityResult | null): Target[] {
  const t: Target[] = [];
  const ratio = (a: number, b: number) => a / Math.max(1e-9, b);
  const ocr = results.ocr;
  if (ocr) {
    t.push({
      name: "PaddleOCR cls, binary bodies: Citadel / naive jobs/s",
      value: isRun(ocr.binary) ? ratio(ocr.binary.load.jobsPerSec, ocr.naive.load.jobsPerSec) : null,
      op: ">=",
      goal: 1.5,
      unit: "×",
      ...(isRun(ocr.binary) ? {} : { note: `binary route unavailable: ${ocr.binary.unavailable}` }),
    });
  }
  const heavy = results.heavy;
  if (heavy) {
    const best = bestCitadel(heavy);
    t.push({
      name: `heavy conv: Citadel (${best.wire}) / naive jobs/s`,
      value: ratio(best.run.load.jobsPerSec, heavy.naive.load.jobsPerSec),
      op: ">=",
      goal: 1.1,
      unit: "×",
    });
    t.push({
      name: `heavy conv: Citadel (${best.wire}) / onnxruntime alone, samples/s`,
      value: ratio(best.run.load.samplesPerSec, heavy.limit.samplesPerSec),
      op: ">=",
      goal: 0.85,
      unit: "×",
      ...besideBusy(heavy.limit, best.run.load.samplesPerSec),
    });
  }
  for (const r of Object.values(results)) {
    if (!r.multi) continue;
    t.push({
      name: `${MULTI_SAMPLES}-sample jobs (${r.model.name}, ${r.multi.wire}): Citadel / onnxruntime alone, samples/s`,
      value: ratio(r.multi.run.load.samplesPerSec, r.limit.samplesPerSec),
      op: ">=",
      goal: 0.8,
      unit: "×",
      ...besideBusy(r.limit, r.multi.run.load.samplesPerSec),
    });
  }
  if (capacity) {
    t.push({
      name: "worker capacity, no-op model: Citadel / bare BullMQ Worker at concurrency 50",
      value: ratio(capacity.citadel.jobsPerSec, capacity.bareC50.jobsPerSec),
      op: ">=",
      goal: 0.5,
      unit: "×",
    });
  }
  for (const r of Object.values(results)) {
    const best = bestCitadel(r);
    t.push({
      name: `${r.model.name} (${best.wire}): Redis commands per job`,
      value: best.run.redisCmdsPerJob,
      op: "<=",
      goal: 45,
      unit: "",
    });
  }
  for (const r of Object.values(results)) {
    const best = bestCitadel(r);
    t.push({
      name: `${r.model.name} (${best.wire}): half load (${fmt(r.half.rate)} jobs/s), p99 of e2e − inference`,
      value: best.half.overheadP99,
      op: "<=",
      goal: 10,
      unit: " ms",
      note: `a bare BullMQ round trip at this rate: p99 ${fmt(r.half.floor.overheadP99, 1)} ms`,
    });
  }
  return t;
}

function report(
  o: Options,
  results: Record<string, ModelResult>,
  limitsAlt: Map<string, LimitResult & { threads: number }>,
  bulk: Awaited<ReturnType<typeof runBulk>> | null,
  capacity: CapacityResult | null,
  cold: ColdReport | null,
  /** The cluster row's report, or why it was not measured. */
  cluster: ClusterReport | string | null,
  load0: number[],
  started: number,
): void {
  const header = [
    "model",
    "contender",
    "samples/s",
    "jobs/s",
    "p50 ms",
    "p99 ms",
    "samples/run",
    "RSS MB",
    "CPU cores",
    "Redis cmds/job",
  ];
  const rows: string[][] = [header];
  const contenderRow = (model: string, label: string, s: RunSummary) => [
    model,
    label,
    fmt(s.load.samplesPerSec),
    fmt(s.load.jobsPerSec),
    fmt(s.p50),
    fmt(s.p99),
    fmt(s.avgBatch, 2),
    fmt(s.rssMb),
    fmt(s.workerCores + s.apiCores, 2),
    fmt(s.redisCmdsPerJob, 1),
  ];
  const summary: Record<string, unknown> = {};
  for (const r of Object.values(results)) {
    const { model: m, limit, naive, citadel } = r;
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
    rows.push(contenderRow(m.name, "naive BullMQ worker", naive));
    rows.push(contenderRow(m.name, `Citadel JSON (${o.workers} worker)`, citadel));
    if (isRun(r.binary)) rows.push(contenderRow(m.name, `Citadel binary (${o.workers} worker)`, r.binary));
    else rows.push([m.name, "Citadel binary", "unavailable", "-", "-", "-", "-", "-", "-", "-"]);
    if (r.multi) {
      rows.push(contenderRow(m.name, `naive ${MULTI_SAMPLES}-sample jobs`, r.multi.naive));
      rows.push(contenderRow(m.name, `Citadel ${MULTI_SAMPLES}-sample jobs (${r.multi.wire})`, r.multi.run));
    }
    const alt = limitsAlt.get(m.key);
    summary[m.key] = {
      model: m.name,
      limitSamplesPerSec: Math.round(limit.samplesPerSec),
      limitBestBatch: limit.bestBatch,
      limitOtherThreads: alt
        ? { threads: alt.threads, samplesPerSec: Math.round(alt.samplesPerSec), bestBatch: alt.bestBatch }
        : null,
      limitBusyNeighbours: limit.busy
        ? { neighbours: limit.busy.neighbours, samplesPerSec: Math.round(limit.busy.samplesPerSec) }
        : null,
      limitByBatch: Object.fromEntries(Object.entries(limit.byBatch).map(([k, v]) => [k, Math.round(v)])),
      naiveJobsPerSec: Math.round(naive.load.jobsPerSec),
      naiveP50Ms: round1(naive.p50),
      naiveP99Ms: round1(naive.p99),
      naiveRedisCmdsPerJob: round1(naive.redisCmdsPerJob),
      naiveRssMb: Math.round(naive.rssMb),
      naiveCpuMsPerJob: naive.cpuPerJob,
      citadelCpuMsPerJob: citadel.cpuPerJob,
      citadelSamplesPerSec: Math.round(citadel.load.samplesPerSec),
      citadelJobsPerSec: Math.round(citadel.load.jobsPerSec),
      citadelP50Ms: round1(citadel.p50),
      citadelP99Ms: round1(citadel.p99),
      citadelOverheadP50Ms: round1(citadel.overheadP50),
      citadelOverheadP99Ms: round1(citadel.overheadP99),
      citadelAvgBatch: round2(citadel.avgBatch),
      citadelFailed: citadel.load.failed,
      citadelFailures: citadel.load.failures,
      workerRssMb: Math.round(citadel.rssMb),
      workerCpuCores: round2(citadel.workerCores),
      apiCpuCores: round2(citadel.apiCores),
      redisCpuCores: round2(citadel.redisCores),
      redisCmdsPerJob: round1(citadel.redisCmdsPerJob),
      redisTopPerJob: citadel.redisTop,
      halfLoad: halfJson(r.half.rate, r.half.citadel, r.half.p99Runs.citadel),
      overheadOverInference: round2(1 - citadel.load.samplesPerSec / limit.samplesPerSec),
      citadelOverLimit: round2(citadel.load.samplesPerSec / limit.samplesPerSec),
      citadelOverNaive: round2(citadel.load.jobsPerSec / Math.max(1e-9, naive.load.jobsPerSec)),
      naiveOverLimit: round2(naive.load.samplesPerSec / limit.samplesPerSec),
      // Added with issue 11.
      repeats: o.repeats,
      jobsPerSecRuns: r.runs,
      naiveUnfinished: naive.load.unfinished,
      citadelUnfinished: citadel.load.unfinished,
      naiveHalfLoad: halfJson(r.half.rate, r.half.naive, r.half.p99Runs.naive),
      floorHalfLoad: halfJson(r.half.rate, r.half.floor, r.half.p99Runs.floor),
      citadelBinary: isRun(r.binary)
        ? {
            available: true,
            ...runJson(r.binary),
            overLimit: round2(r.binary.load.samplesPerSec / limit.samplesPerSec),
            overNaive: round2(r.binary.load.jobsPerSec / Math.max(1e-9, naive.load.jobsPerSec)),
            halfLoad: r.half.binary ? halfJson(r.half.rate, r.half.binary, r.half.p99Runs.binary) : null,
          }
        : { available: false, reason: r.binary.unavailable },
    };
  }
  const widths = header.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)));
  const line = (r: string[]) =>
    r.map((cell, c) => (c < 2 ? cell.padEnd(widths[c] ?? 0) : cell.padStart(widths[c] ?? 0))).join("  ");
  const out: string[] = [""];
  if (rows.length > 1) {
    out.push(
      o.repeats === 1
        ? "one measurement per contender (--repeats 1, the --quick default): not a median"
        : `median of ${o.repeats} measurements per contender (jobs/s of each run in the JSON, jobsPerSecRuns)`,
    );
    out.push(line(header));
    out.push(widths.map((w) => "-".repeat(w)).join("  "));
    for (const r of rows.slice(1)) out.push(line(r));
    out.push("");
  }
  for (const r of Object.values(results)) {
    const { model: m, citadel, naive } = r;
    const s = summary[m.key] as Record<string, number>;
    out.push(
      `${m.name}: Citadel JSON/limit ${s.citadelOverLimit}×, Citadel JSON/naive ${s.citadelOverNaive}×` +
        (isRun(r.binary)
          ? `, Citadel binary/limit ${fmt(r.binary.load.samplesPerSec / r.limit.samplesPerSec, 2)}×, binary/naive ${fmt(r.binary.load.jobsPerSec / Math.max(1e-9, naive.load.jobsPerSec), 2)}×`
          : `; binary unavailable (${r.binary.unavailable})`),
    );
    out.push(
      `  e2e−inference under load, p50 / p99: Citadel JSON ${fmt(citadel.overheadP50, 1)} / ${fmt(citadel.overheadP99, 1)} ms` +
        (isRun(r.binary) ? `, binary ${fmt(r.binary.overheadP50, 1)} / ${fmt(r.binary.overheadP99, 1)} ms` : "") +
        `, naive ${fmt(naive.overheadP50, 1)} / ${fmt(naive.overheadP99, 1)} ms`,
    );
    out.push(
      `  half load, all at ${fmt(r.half.rate, 1)} jobs/s, p99 e2e−inference (median of ${o.repeats}; runs): naive ${fmt(r.half.naive.overheadP99, 1)} ms ${JSON.stringify(r.half.p99Runs.naive)}, Citadel JSON ${fmt(r.half.citadel.overheadP99, 1)} ms ${JSON.stringify(r.half.p99Runs.citadel)}` +
        (r.half.binary
          ? `, binary ${fmt(r.half.binary.overheadP99, 1)} ms ${JSON.stringify(r.half.p99Runs.binary)}`
          : "") +
        `; floor, a bare BullMQ round trip: p50 ${fmt(r.half.floor.overheadP50, 1)}, p99 ${fmt(r.half.floor.overheadP99, 1)} ms ${JSON.stringify(r.half.p99Runs.floor)}`,
    );
    out.push(`  Redis commands per job (incl. inside Lua): Citadel JSON ${JSON.stringify(citadel.redisTop)}`);
    if (isRun(r.binary))
      out.push(`    binary ${fmt(r.binary.redisCmdsPerJob, 1)}: ${JSON.stringify(r.binary.redisTop)}`);
    out.push(
      `  CPU ms per job: Citadel JSON ${JSON.stringify(citadel.cpuPerJob)}; naive ${JSON.stringify(naive.cpuPerJob)}`,
    );
    if (isRun(r.binary)) out.push(`    Citadel binary ${JSON.stringify(r.binary.cpuPerJob)}`);
    if (r.multi)
      out.push(
        `  ${MULTI_SAMPLES}-sample jobs (${r.multi.wire}): ${fmt(r.multi.run.load.samplesPerSec)} samples/s = ${fmt(r.multi.run.load.samplesPerSec / r.limit.samplesPerSec, 2)}× onnxruntime alone (${fmt(r.limit.byBatch[MULTI_SAMPLES] ?? Number.NaN)} at batch ${MULTI_SAMPLES}; at batch ${r.limit.bestBatch} ${fmt(r.multi.limitAfter)} measured again right after the row: ${fmt(r.multi.run.load.samplesPerSec / r.multi.limitAfter, 2)}×); CPU ms per job ${JSON.stringify(r.multi.run.cpuPerJob)}`,
        `    naive worker on the same jobs: ${fmt(r.multi.naive.load.samplesPerSec)} samples/s = ${fmt(r.multi.naive.load.samplesPerSec / r.limit.samplesPerSec, 2)}× onnxruntime alone; Citadel / naive ${fmt(r.multi.run.load.samplesPerSec / r.multi.naive.load.samplesPerSec, 2)}×; CPU ms per job ${JSON.stringify(r.multi.naive.cpuPerJob)}`,
      );
    const alt = limitsAlt.get(m.key);
    if (alt)
      out.push(`  limit with ${alt.threads} thread(s): ${fmt(alt.samplesPerSec)} samples/s at batch ${alt.bestBatch}`);
    const busy = r.limit.busy;
    if (busy) {
      const best = bestCitadel(r);
      out.push(
        `  limit beside ${busy.neighbours} busy core(s) (context, not a target's baseline): ${fmt(busy.samplesPerSec)} samples/s at batch ${r.limit.bestBatch}; Citadel ${best.wire} / that ${fmt(best.run.load.samplesPerSec / busy.samplesPerSec, 2)}×`,
      );
    }
    const runs = r.runs;
    if (o.repeats > 1)
      out.push(
        `  jobs/s per run: naive ${runs.naive.join(", ")}; Citadel JSON ${runs.citadel.join(", ")}; binary ${runs.binary.join(", ") || "-"}`,
      );
  }
  if (bulk)
    out.push(
      `bulk submit (one API process, 16-float inputs, 500/request): ${fmt(bulk.jobsPerSec)} jobs/s accepted; refused ${JSON.stringify(bulk.refused)}`,
    );
  if (capacity) {
    out.push(
      `worker capacity, no-op model, ${capacity.jobs} pre-filled jobs each (jobs/s between 5% and 95% settled):`,
    );
    for (const [label, d] of [
      ["one Citadel worker", capacity.citadel],
      ["bare BullMQ Worker, concurrency 1", capacity.bareC1],
      ["bare BullMQ Worker, concurrency 50", capacity.bareC50],
    ] as const)
      out.push(
        `  ${label.padEnd(35)} ${fmt(d.jobsPerSec).padStart(7)} jobs/s${d.reachedEnd ? "" : " (time cap)"}; Redis cmds/job ${fmt(d.redisCmdsPerJob, 1)}; CPU ms/job ${JSON.stringify(d.cpuPerJob)}`,
      );
  }
  if (cold) out.push(...coldLines(cold));
  if (typeof cluster === "string") out.push(`cluster capacity: not measured: ${cluster}`);
  else if (cluster) out.push(...clusterLines(cluster));
  const targets = [...collectTargets(results, capacity), ...coldTargets(cold)];
  out.push("");
  out.push(
    `targets (issues 11 and 14)${o.quick || o.repeats < 3 ? "; a quick or single-repeat run: indicative only" : ""}:`,
  );
  out.push(...targetLines(targets).map((l) => `  ${l}`));
  const load1 = os.loadavg();
  out.push(
    `load average before ${load0.map((x) => x.toFixed(2)).join(" ")}, after ${load1.map((x) => x.toFixed(2)).join(" ")}; ${fmt((performance.now() - started) / 1000)} s`,
  );
  process.stdout.write(`${out.join("\n")}\n`);

  const sixteen = Object.values(results).find((r) => r.multi);
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
    // Added with issue 11.
    repeats: o.repeats,
    sixteenSampleJobs: sixteen?.multi
      ? {
          model: sixteen.model.name,
          wire: sixteen.multi.wire,
          samplesPerJob: MULTI_SAMPLES,
          ...runJson(sixteen.multi.run),
          jobsPerSecRuns: sixteen.multi.runs,
          limitSamplesPerSec: Math.round(sixteen.limit.samplesPerSec),
          overLimit: round2(sixteen.multi.run.load.samplesPerSec / sixteen.limit.samplesPerSec),
          limitAfterSamplesPerSec: Math.round(sixteen.multi.limitAfter),
          overLimitAfter: round2(sixteen.multi.run.load.samplesPerSec / sixteen.multi.limitAfter),
          naive: { ...runJson(sixteen.multi.naive), jobsPerSecRuns: sixteen.multi.naiveRuns },
          naiveOverLimit: round2(sixteen.multi.naive.load.samplesPerSec / sixteen.limit.samplesPerSec),
          overNaive: round2(sixteen.multi.run.load.samplesPerSec / sixteen.multi.naive.load.samplesPerSec),
        }
      : null,
    workerCapacity: capacity
      ? {
          jobs: capacity.jobs,
          citadel: drainJson(capacity.citadel),
          bareConcurrency1: drainJson(capacity.bareC1),
          bareConcurrency50: drainJson(capacity.bareC50),
          jobsPerSecRuns: capacity.runs,
          citadelOverBareConcurrency1: round2(capacity.citadel.jobsPerSec / Math.max(1e-9, capacity.bareC1.jobsPerSec)),
          citadelOverBareConcurrency50: round2(
            capacity.citadel.jobsPerSec / Math.max(1e-9, capacity.bareC50.jobsPerSec),
          ),
        }
      : null,
    // Added with issue 14.
    coldStart: cold ? coldJson(cold) : null,
    // Added with issue 14 point 5 (docs/capacity.md).
    clusterCapacity: typeof cluster === "string" ? { available: false, reason: cluster } : cluster,
    targets: targets.map((t) => ({
      name: t.name,
      value: t.value === null ? null : round2(t.value),
      goal: `${t.op} ${t.goal}`,
      pass: passes(t),
      ...(t.note ? { note: t.note } : {}),
    })),
  };
  if (o.svg && Object.keys(results).length > 0) {
    const file = path.join(repoRoot, "docs", "perf-bench.svg");
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(
      file,
      renderChart(
        Object.values(results).map((r) => ({
          label: r.model.name,
          limit: r.limit.samplesPerSec,
          naive: r.naive.load.samplesPerSec,
          citadel: bestCitadel(r).run.load.samplesPerSec,
        })),
        `${os.cpus().length} cores, ${o.threads} intra-op threads each, ${o.workers} Citadel worker(s)${o.quick ? ", --quick" : ""}`,
      ),
    );
    process.stdout.write(`chart: ${path.relative(process.cwd(), file)}\n`);
  }
  process.stdout.write(`${JSON.stringify(json)}\n`);
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
