/**
 * The contenders, each started fresh for one measurement and stopped after it (an idle
 * contender left running would take CPU from the one being measured):
 *
 *   naive    a plain BullMQ Worker (its own process, naive-worker.ts) calling
 *            session.run per job, fed by Queue.add with prebuilt job data; clients wait
 *            with job.waitUntilFinished;
 *   Citadel  one or more workers as real processes behind the (long-running) API;
 *            clients submit and wait in one request, JSON/base64 or binary bodies.
 *
 * Each one tells which processes to count CPU for (probes), with the same keys as
 * the report: naive {worker, redis, client}; Citadel {api, workerMain, workerRunner,
 * redis, client}.
 */
import { spawn } from "node:child_process";
import path from "node:path";
import { Queue, QueueEvents } from "bullmq";
import { Redis } from "ioredis";
import { Client, freePort, type Proc, repoRoot, type setupFleet, startProc, workerEnv } from "./harness.js";
import type { JobOutcome, Probe } from "./measure.js";
import type { NaiveJobData, PreparedBody } from "./wire.js";

export interface Running {
  one: (i: number) => Promise<JobOutcome>;
  probes: Probe[];
  stop(): Promise<void>;
  /** Samples per inference run so far (warm-up included), from the workers' own metrics. */
  samplesPerRun?(): Promise<number>;
}

/**
 * Samples per run from Citadel workers' `citadel_batch_size` histograms: a job's result
 * reports only its own samples (the run's size would tell a tenant about others).
 */
export async function samplesPerRun(workers: readonly Proc[]): Promise<number> {
  let sum = 0;
  let count = 0;
  for (const w of workers) {
    const text = await (await fetch(`${w.url}/metrics`)).text();
    for (const line of text.split("\n")) {
      const value = Number(line.slice(line.lastIndexOf(" ") + 1));
      if (line.startsWith("citadel_batch_size_sum")) sum += value;
      else if (line.startsWith("citadel_batch_size_count")) count += value;
    }
  }
  return count > 0 ? sum / count : Number.NaN;
}

export interface Contender {
  label: string;
  start(): Promise<Running>;
}

/** Probes every contender shares: Redis and this (client) process. */
export function sharedProbes(redisPid: number): Probe[] {
  return [
    { key: "redis", pid: redisPid },
    { key: "client", pid: process.pid },
  ];
}

// ---------------------------------------------------------------------------------
// naive-worker.ts as a child process
// ---------------------------------------------------------------------------------

export interface ChildWorker {
  pid: number;
  stop(): Promise<void>;
}

/** Starts naive-worker.ts with `env` (see its header) and waits for its "ready". */
export async function spawnNaiveWorker(redisUrl: string, env: Record<string, string>): Promise<ChildWorker> {
  const child = spawn(
    process.execPath,
    ["--conditions=@citadel/source", "--import", "tsx", path.join(repoRoot, "test/bench/naive-worker.ts")],
    {
      cwd: repoRoot,
      env: { PATH: process.env.PATH ?? "", REDIS_URL: redisUrl, ...env },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on("data", (d: Buffer) => d.toString().includes("ready") && resolve());
    child.once("exit", (c) => reject(new Error(`naive worker exited with ${c}`)));
  });
  return {
    pid: child.pid ?? 0,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}

export function naiveContender(opts: {
  label: string;
  redisUrl: string;
  redisPid: number;
  /** The model the worker runs; null: the bare worker (NAIVE_NOOP), whose processor returns at once. */
  modelFile: string | null;
  queueName: string;
  threads: number;
  /** Job data, built once; job i sends data[i % length]. */
  data: readonly NaiveJobData[];
  concurrency: number;
  /** Samples along the batch axis of each job's input (1 unless the 16-sample row). */
  samplesPerJob?: number;
}): Contender {
  const prefix = `{naive-${process.pid}}`;
  const samples = opts.samplesPerJob ?? 1;
  return {
    label: opts.label,
    start: async () => {
      const child = await spawnNaiveWorker(opts.redisUrl, {
        NAIVE_QUEUE: opts.queueName,
        NAIVE_PREFIX: prefix,
        ...(opts.modelFile === null ? { NAIVE_NOOP: "1" } : { NAIVE_MODEL: opts.modelFile }),
        NAIVE_THREADS: String(opts.threads),
      });
      const connection = new Redis(opts.redisUrl, { maxRetriesPerRequest: null });
      const queue = new Queue(opts.queueName, { connection, prefix });
      const events = new QueueEvents(opts.queueName, {
        connection: new Redis(opts.redisUrl, { maxRetriesPerRequest: null }),
        prefix,
      });
      await events.waitUntilReady();
      queue.setMaxListeners(opts.concurrency * 4);
      events.setMaxListeners(opts.concurrency * 4);
      return {
        probes: [{ key: "worker", pid: child.pid }, ...sharedProbes(opts.redisPid)],
        one: async (i) => {
          const t = performance.now();
          try {
            const job = await queue.add("infer", opts.data[i % opts.data.length] as NaiveJobData);
            const out = (await job.waitUntilFinished(events, 60_000)) as { inferenceMs?: number } | null;
            // The bare worker runs no model: its whole latency is overhead.
            const inferenceMs = opts.modelFile === null ? 0 : out?.inferenceMs;
            return {
              ok: true,
              latencyMs: performance.now() - t,
              samples,
              batchSize: samples,
              ...(typeof inferenceMs === "number" ? { inferenceMs } : {}),
            };
          } catch (err) {
            return { ok: false, latencyMs: performance.now() - t, code: (err as Error).name || "FAILED" };
          }
        },
        stop: async () => {
          await child.stop();
          await events.close();
          await queue.obliterate({ force: true });
          await queue.close();
          connection.disconnect();
        },
      };
    },
  };
}

// ---------------------------------------------------------------------------------
// Citadel
// ---------------------------------------------------------------------------------

type Fleet = Awaited<ReturnType<typeof setupFleet>>;

/** Starts `count` Citadel workers serving `models`, as real processes. */
export async function startCitadelWorkers(
  fleet: Fleet,
  models: string,
  count: number,
  threads: number,
  tag: string,
): Promise<Proc[]> {
  const workers: Proc[] = [];
  for (let w = 0; w < count; w++) {
    const port = await freePort();
    workers.push(
      await startProc(
        "worker",
        `worker-${tag}-${w + 1}`,
        workerEnv(fleet.env, port, `bench-${tag}-${w + 1}`, {
          WORKER_MODELS: models,
          RUNTIME_THREADS: String(threads),
        }),
        fleet.logDir,
        port,
      ),
    );
  }
  return workers;
}

export function citadelWorkerProbes(workers: readonly Proc[]): Probe[] {
  return workers.flatMap((w) => [
    { key: "workerMain", pid: w.pid, part: "main" as const },
    { key: "workerRunner", pid: w.pid, part: "others" as const },
  ]);
}

/** One Citadel job: submit and wait in one request, the body prebuilt. */
export function citadelJob(client: Client, bodies: readonly PreparedBody[], samples: number) {
  return async (i: number): Promise<JobOutcome> => {
    const b = bodies[i % bodies.length] as PreparedBody;
    const t = performance.now();
    try {
      const r = await client.submitAndWait(b.body, b.wire === "binary" ? { headerLength: b.headerLength } : {});
      const latencyMs = performance.now() - t;
      const v = r.view;
      if (!v) return { ok: false, latencyMs, code: r.code ?? `HTTP_${r.status}` };
      if (v.status !== "completed" || !v.result)
        return { ok: false, latencyMs, code: v.error?.code ?? v.status.toUpperCase() };
      return { ok: true, latencyMs, samples, batchSize: v.result.batchSize, inferenceMs: v.result.inferenceMs };
    } catch (err) {
      return { ok: false, latencyMs: performance.now() - t, code: (err as Error).name };
    }
  };
}

export function citadelContender(opts: {
  label: string;
  fleet: Fleet;
  api: Proc;
  redisPid: number;
  model: string;
  workers: number;
  threads: number;
  bodies: readonly PreparedBody[];
  samplesPerJob: number;
}): Contender {
  return {
    label: opts.label,
    start: async () => {
      const workers = await startCitadelWorkers(opts.fleet, opts.model, opts.workers, opts.threads, opts.model);
      return {
        probes: [{ key: "api", pid: opts.api.pid }, ...citadelWorkerProbes(workers), ...sharedProbes(opts.redisPid)],
        one: citadelJob(new Client(opts.api.url, opts.fleet.apiKey), opts.bodies, opts.samplesPerJob),
        samplesPerRun: () => samplesPerRun(workers),
        stop: async () => {
          await Promise.all(workers.map((w) => w.stop()));
        },
      };
    },
  };
}

/**
 * Whether the API takes a binary body: null when it accepted it (the job is queued and
 * a worker will settle it), else why not (e.g. "HTTP 415 …" before the route exists).
 */
export async function binaryRefusal(api: Proc, apiKey: string, body: PreparedBody): Promise<string | null> {
  if (body.wire !== "binary") throw new Error("binaryRefusal needs a binary body");
  const res = await fetch(`${api.url}/v1/jobs`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${apiKey}`,
      "content-type": "application/octet-stream",
      "inference-header-content-length": String(body.headerLength),
    },
    body: body.body,
  });
  const text = await res.text();
  if (res.status === 200 || res.status === 202) return null;
  return `HTTP ${res.status} ${text.slice(0, 200)}`;
}
