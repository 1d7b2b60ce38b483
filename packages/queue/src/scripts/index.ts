import { readFileSync } from "node:fs";
import type { Cluster, Redis } from "ioredis";

/**
 * Citadel's Redis Lua scripts, one `.lua` file each in this folder (their headers say
 * what KEYS, ARGV and the result are), as BullMQ keeps its commands/ folder. A file
 * named `<name>-<n>.lua` takes exactly n keys; a plain `<name>.lua` takes as many as
 * the call passes. The files are read once, when this module loads (relative to it, so
 * any working directory finds them), and defined on a client once with
 * `defineCommand`: ioredis then sends EVALSHA, and the full script only the first time
 * a connection runs it.
 */
const FILES = {
  quotaReserve: "quotaReserve.lua",
  quotaGiveBack: "quotaGiveBack.lua",
  quotaRelease: "quotaRelease-3.lua",
  quotaReleaseMany: "quotaReleaseMany.lua",
  settleFinal: "settleFinal-3.lua",
  finishJobs: "finishJobs-9.lua",
  takeJobs: "takeJobs-9.lua",
  batchRecord: "batchRecord-3.lua",
  batchSettled: "batchSettled-2.lua",
  tokenBuckets: "tokenBuckets.lua",
  idempotencyClaim: "idempotencyClaim-1.lua",
  idempotencyTakeOver: "idempotencyTakeOver-1.lua",
  idempotencyReopen: "idempotencyReopen-2.lua",
  idempotencyConfirm: "idempotencyConfirm-1.lua",
  idempotencyUnclaim: "idempotencyUnclaim-1.lua",
} as const;

export type ScriptName = keyof typeof FILES;

export interface ScriptSource {
  file: string;
  /** Fixed key count from the file name; undefined when each call passes its own. */
  numberOfKeys: number | undefined;
  lua: string;
}

/**
 * A script's text with its `--- @include "<file>"` lines replaced by that file (as
 * BullMQ's commands include shared parts), so a step two scripts share is written once.
 */
function read(file: string): string {
  const text = readFileSync(new URL(`./${file}`, import.meta.url), "utf8");
  return text.replace(/^--- @include "([\w/.-]+\.lua)"$/gm, (_line, inc: string) => read(inc).trimEnd());
}

function load(file: string): ScriptSource {
  const keyCount = /-(\d+)\.lua$/.exec(file)?.[1];
  return { file, numberOfKeys: keyCount === undefined ? undefined : Number(keyCount), lua: read(file) };
}

/** Every script's source, read once per process. */
export const scriptSources: Readonly<Record<ScriptName, ScriptSource>> = Object.fromEntries(
  Object.entries(FILES).map(([name, file]) => [name, load(file)]),
) as Record<ScriptName, ScriptSource>;

/** The name a script is defined under on a client (its method there). */
export function commandName(name: ScriptName): string {
  return `citadel:${name}`;
}

type Arg = string | number;
type Command = (...args: Arg[]) => Promise<unknown>;

/**
 * Queues a script's call on a pipeline or MULTI (ioredis copies a client's defined
 * commands onto them): its reply comes back with the others'. The client must have had
 * `scripts()` called for it.
 */
export function scriptOn(batch: object, name: ScriptName, keys: readonly string[], args: Arg[]): void {
  const command = (batch as unknown as Record<string, ((...a: Arg[]) => unknown) | undefined>)[commandName(name)];
  if (!command) throw new Error(`Citadel's script ${name} is not defined on this connection`);
  command.apply(batch, [...keys, ...args]);
}

/** settleFinal-3.lua's keys: the job's hash, its input bytes, its queue's outbox. */
export type SettleFinalKeys = [job: string, inputs: string, outbox: string];

/** What a final job's outbox entry carries besides its outcome (from its data). */
export interface SettleFinalArgs {
  jobId: string;
  /** Its tenant; none when its data could not be read (no share to release). */
  tenant?: string | undefined;
  batch?: { id: string; line: number; customId?: string | undefined } | undefined;
  /** Present when its outcome is to be notified: the URL it named, none for its tenant's own. */
  notify?: { url?: string | undefined } | undefined;
  /** The outcome when its hash is gone (a cancel removed it). */
  fallback?: { status: "cancelled"; finishedAt: number } | undefined;
  /** The outbox's approximate bound. */
  maxLen: number;
}

/** settleFinal-3.lua's ARGV. */
export function settleFinalArgv(a: SettleFinalArgs): Arg[] {
  return [
    a.jobId,
    a.tenant ?? "",
    a.batch?.id ?? "",
    a.batch?.line ?? 0,
    a.batch?.customId ?? "",
    a.notify ? "1" : "",
    a.notify?.url ?? "",
    a.fallback?.status ?? "",
    a.fallback?.finishedAt ?? 0,
    a.maxLen,
  ];
}

/** takeJobs-9.lua's keys, in its KEYS order. */
export type TakeJobsKeys = [
  wait: string,
  active: string,
  prioritized: string,
  events: string,
  delayed: string,
  meta: string,
  priorityCounter: string,
  marker: string,
  fairShares: string,
];

export interface TakeJobsCall {
  keys: TakeJobsKeys;
  /** The queue's key prefix ('<prefix>:<queue>:'). */
  keyPrefix: string;
  nowMs: number;
  lockDurationMs: number;
  /** What the queue's cancel flags start with (keys.cancelRequestedPrefix). */
  cancelPrefix: string;
  /** Inputs up to this size (the job data's inputBytes) come back with the take; larger ones are left to read. */
  inlineMaxBytes: number;
  /** One lock token per job wanted. */
  tokens: string[];
}

/** A job as takeJobs hands it over: the fields of its hash the worker reads, its inputs and its cancel flag. */
export interface TakenJob {
  id: string;
  /** BullMQ's hash fields, as stored: `data` and `opts` JSON text, `stacktrace` JSON text or null. */
  data: string | null;
  opts: string | null;
  timestamp: number;
  attemptsMade: number;
  /** BullMQ's `defa`: why the job must fail at this fetch (it stalled too often), or null. */
  deferredFailure: string | null;
  stacktrace: string | null;
  /** Its input bytes (a view on the reply), null when it has none or they were left to read. */
  inputs: Buffer | null;
  /** Its inputs are larger than the call's inlineMaxBytes: the caller reads them (a plain GET/MGET). */
  inputsLeft: boolean;
  /** Whether a cancel was asked for before the take. */
  cancelRequested: boolean;
}

/**
 * Jobs taken and, when none was, when the first delayed job is due (epoch ms; 0 for
 * none); "unsupported" when the queue needs BullMQ's own script.
 */
export type TakenJobs = { jobs: TakenJob[]; nextDueAt: number } | "unsupported";

/** One entry of takeJobs-9.lua's answer (binary-safe: every string a Buffer). */
type RawTakenJob = [
  id: Buffer,
  data: Buffer | null,
  opts: Buffer | null,
  timestamp: Buffer | null,
  attemptsMade: Buffer | null,
  deferredFailure: Buffer | null,
  stacktrace: Buffer | null,
  inputs: Buffer | null,
  cancel: Buffer | null,
  left: Buffer | null,
];

function takenJob([
  id,
  data,
  opts,
  timestamp,
  attemptsMade,
  defa,
  stacktrace,
  inputs,
  cancel,
  left,
]: RawTakenJob): TakenJob {
  return {
    id: id.toString(),
    data: data?.toString() ?? null,
    opts: opts?.toString() ?? null,
    timestamp: Number(timestamp?.toString() ?? 0),
    attemptsMade: Number(attemptsMade?.toString() ?? 0),
    deferredFailure: defa?.toString() ?? null,
    stacktrace: stacktrace?.toString() ?? null,
    inputs,
    inputsLeft: left !== null,
    cancelRequested: cancel !== null,
  };
}

/** finishJobs-9.lua's queue keys, in its KEYS order. */
export type FinishJobsQueueKeys = [
  wait: string,
  active: string,
  prioritized: string,
  events: string,
  stalled: string,
  meta: string,
  completed: string,
  failed: string,
  outbox: string,
];

/** One job's final outcome as the lease settles it (finishJobs-9.lua). */
export interface FinishedJob {
  id: string;
  /** The lock token it was fetched with. */
  token: string;
  outcome: { status: "completed"; result: string } | { status: "failed"; reason: string };
  /** Its stack traces as BullMQ stores them (JSON text): what a failure, or a cancel that overtakes a completion, writes back. */
  stacktrace: string;
  /** Attempts made, this one included. */
  attemptsMade: number;
  /** Attempts allowed (BullMQ's retries-exhausted event when reached). */
  attempts: number;
  /** What its outbox entry carries besides the outcome (settleFinal's fields). */
  entry: Pick<SettleFinalArgs, "tenant" | "batch" | "notify">;
}

export interface FinishJobsCall {
  queue: FinishJobsQueueKeys;
  /** The queue's key prefix ('<prefix>:<queue>:'): removed jobs' keys are built from it. */
  keyPrefix: string;
  nowMs: number;
  outboxMaxLen: number;
  /** Keep ages in seconds (BullMQ's removeOnComplete / removeOnFail `{ age }`); undefined removes nothing this call. */
  keepCompletedSeconds?: number | undefined;
  keepFailedSeconds?: number | undefined;
  /** The event stream's approximate bound (BullMQ's maxLenEvents). */
  eventsMaxLen: number;
  /** What the queue's cancel flags start with (keys.cancelRequestedPrefix): a flagged completion is settled as cancelled. */
  cancelPrefix: string;
  /** The failure reason such a job gets ('CANCELLED: …'). */
  cancelledReason: string;
  jobs: FinishedJob[];
}

/** finishJobs-9.lua's answer for a job: settled as asked, settled as cancelled (a cancel flag overtook its completion), or BullMQ's negative code. */
export const FINISH_SETTLED = 0;
export const FINISH_CANCELLED = 1;

/** batchRecord-3.lua's keys: the batch's hash and results, the notifications stream. */
export type BatchRecordKeys = [batch: string, results: string, notifications: string];

export interface BatchRecordArgs {
  line: number;
  /** The line's record as the job's settlement built it (JSON). */
  record: string;
  status: "completed" | "failed" | "cancelled";
  /** The batch's tenant and id, for its completion notification. */
  tenant: string;
  batchId: string;
  /** The notifications stream's approximate bound. */
  maxLen: number;
}

/** batchRecord-3.lua's ARGV. */
export function batchRecordArgv(a: BatchRecordArgs, nowMs = Date.now()): Arg[] {
  return [a.line, a.record, a.status, a.tenant, a.batchId, a.maxLen, nowMs];
}

/** A job asking the quota for room: its reservation marker and bytes, and its Idempotency-Key entry when it has one. */
export interface QuotaJob {
  marker: string;
  bytes: number;
  entry?: { key: string; attempt: number };
}

export interface QuotaReserveCall {
  jobsKey: string;
  bytesKey: string;
  maxJobs: number;
  maxBytes: number;
  markerTtlMs: number;
  jobs: QuotaJob[];
  /** The tenant's sample bucket (in its slot), charged in the same call only when the reservation is taken. */
  bucket?: { charge: TokenBucketCharge; nowMs: number } | undefined;
}

/** 0 taken, 1 over the jobs bound, 2 over the bytes bound, 3 an entry is another attempt's, 4 the bucket refused. */
export type QuotaVerdict = 0 | 1 | 2 | 3 | 4;

export interface QuotaReserveResult {
  verdict: QuotaVerdict;
  /** The tenant's queued jobs before this call (verdict 4: 0). */
  jobsBefore: number;
  /** Verdict 4: when the bucket could allow the charge. */
  retryAfterMs: number;
  /** Jobs this call reserved (keyed jobs reserved earlier are not counted again). */
  reservedNow: number;
}

export interface TokenBucketCharge {
  key: string;
  /** Tokens per second. */
  rate: number;
  burst: number;
  /** Negative gives tokens back. */
  cost: number;
}

/** The typed calls, one per script; see each `.lua` header for what it does. */
export interface CitadelScripts {
  quotaReserve(call: QuotaReserveCall): Promise<QuotaReserveResult>;
  /** Gives back the shares of jobs that never reached the queue; returns how many. */
  quotaGiveBack(call: { jobsKey: string; bytesKey: string; jobs: Omit<QuotaJob, "bytes">[] }): Promise<number>;
  /** Releases a settled job's share; true when this call released it. */
  quotaRelease(jobsKey: string, bytesKey: string, marker: string): Promise<boolean>;
  /** Releases several settled jobs' shares of one tenant, each once; returns how many this call released. */
  quotaReleaseMany(jobsKey: string, bytesKey: string, markers: string[]): Promise<number>;
  /** Charges every bucket or none: 0 when charged, else the 1-based index of the bucket that refused. */
  tokenBuckets(nowMs: number, buckets: TokenBucketCharge[]): Promise<{ refusedBy: number; retryAfterMs: number }>;
  /** A final job's bookkeeping in its queue's slot (inputs dropped, outbox entry): 1 done, -1 not final. */
  settleFinal(keys: SettleFinalKeys, args: SettleFinalArgs): Promise<number>;
  /** Settles a worker's batch (finish, inputs dropped, outbox entry each): one code per job (FINISH_SETTLED, FINISH_CANCELLED, else BullMQ's). */
  finishJobs(call: FinishJobsCall): Promise<number[]>;
  /** Takes up to `tokens.length` jobs for a worker, locked with those tokens in order. */
  takeJobs(call: TakeJobsCall): Promise<TakenJobs>;
  /** Records a batch job's final outcome on its line: 1 recorded now, 0 already (or batch gone). */
  batchRecord(keys: BatchRecordKeys, args: BatchRecordArgs): Promise<number>;
  /** Seals a batch (or only checks it) and notifies its completion if it is over: 1 notified now, 0 not, -1 gone. */
  batchSettled(
    keys: [batch: string, notifications: string],
    args: { tenant: string; batchId: string; maxLen: number; seal: boolean },
  ): Promise<number>;
  /** The existing entry's fields (id, fp, model, version, state, attempt, reserved, at, lease), or null when claimed now. */
  idempotencyClaim(
    key: string,
    first: { id: string; fp: string; model: string; version: string },
    nowMs: number,
    ttlMs: number,
    leaseUntilMs: number,
  ): Promise<(string | null)[] | null>;
  idempotencyTakeOver(key: string, leaseUntilMs: number, nowMs: number): Promise<number>;
  /** Reopens a confirmed entry whose job vanished: the new attempt (-1: the entry changed) and whether its reservation is kept. */
  idempotencyReopen(
    key: string,
    marker: string,
    jobId: string,
    leaseUntilMs: number,
  ): Promise<{ attempt: number; reservationKept: boolean }>;
  idempotencyConfirm(key: string): Promise<number>;
  idempotencyUnclaim(key: string, attempt: number): Promise<number>;
}

/**
 * KEYS (the counters, a marker per job, the keyed jobs' entries) and per-job ARGV, as
 * quotaReserve.lua and quotaGiveBack.lua read them.
 */
function quotaLayout<J extends Omit<QuotaJob, "bytes">>(
  jobsKey: string,
  bytesKey: string,
  jobs: J[],
  perJob: (j: J, entryIndex: number) => Arg[],
): { keys: string[]; args: Arg[] } {
  const entries: string[] = [];
  const args = jobs.flatMap((j) => {
    if (j.entry) entries.push(j.entry.key);
    return perJob(j, j.entry ? entries.length : 0);
  });
  return { keys: [jobsKey, bytesKey, ...jobs.map((j) => j.marker), ...entries], args };
}

function bind(redis: Redis | Cluster): CitadelScripts {
  const client = redis as unknown as Record<string, unknown>;
  for (const [name, s] of Object.entries(scriptSources)) {
    const command = commandName(name as ScriptName);
    if (typeof client[command] === "function") continue;
    redis.defineCommand(
      command,
      s.numberOfKeys === undefined ? { lua: s.lua } : { numberOfKeys: s.numberOfKeys, lua: s.lua },
    );
  }
  const run = (name: ScriptName, ...args: Arg[]): Promise<unknown> =>
    (client[commandName(name)] as Command).apply(redis, args);
  // The same call answered in Buffers (ioredis defines `<name>Buffer` beside each command).
  const runBuffer = (name: ScriptName, ...args: Arg[]): Promise<unknown> =>
    (client[`${commandName(name)}Buffer`] as Command).apply(redis, args);
  const variadic = (name: ScriptName, keys: string[], args: Arg[]): Promise<unknown> =>
    run(name, keys.length, ...keys, ...args);

  return {
    async quotaReserve(c) {
      const { keys, args } = quotaLayout(c.jobsKey, c.bytesKey, c.jobs, (j, entry) => [
        j.bytes,
        entry,
        j.entry?.attempt ?? 0,
      ]);
      const b = c.bucket?.charge;
      const [verdict, second, reservedNow] = (await variadic(
        "quotaReserve",
        b && b.cost > 0 ? [...keys, b.key] : keys,
        [
          c.maxJobs,
          c.maxBytes,
          c.jobs.length,
          c.markerTtlMs,
          c.bucket?.nowMs ?? 0,
          b?.rate ?? 0,
          b?.burst ?? 0,
          b && b.cost > 0 ? b.cost : 0,
          ...args,
        ],
      )) as [QuotaVerdict, number, number];
      return verdict === 4
        ? { verdict, jobsBefore: 0, retryAfterMs: second, reservedNow }
        : { verdict, jobsBefore: second, retryAfterMs: 0, reservedNow };
    },
    async quotaGiveBack(c) {
      const { keys, args } = quotaLayout(c.jobsKey, c.bytesKey, c.jobs, (j, entry) => [entry, j.entry?.attempt ?? 0]);
      return Number(await variadic("quotaGiveBack", keys, [c.jobs.length, ...args]));
    },
    async quotaRelease(jobsKey, bytesKey, marker) {
      return Number(await run("quotaRelease", jobsKey, bytesKey, marker)) === 1;
    },
    async quotaReleaseMany(jobsKey, bytesKey, markers) {
      return Number(await variadic("quotaReleaseMany", [jobsKey, bytesKey, ...markers], []));
    },
    async tokenBuckets(nowMs, buckets) {
      const args = buckets.flatMap((b) => [b.rate, b.burst, b.cost]);
      const [refusedBy, retryAfterMs] = (await variadic(
        "tokenBuckets",
        buckets.map((b) => b.key),
        [nowMs, ...args],
      )) as [number, number];
      return { refusedBy, retryAfterMs };
    },
    async settleFinal(keys, args) {
      return Number(await run("settleFinal", ...keys, ...settleFinalArgv(args)));
    },
    async finishJobs(c) {
      const args = c.jobs.flatMap((j): Arg[] => [
        j.id,
        j.token,
        j.outcome.status,
        j.outcome.status === "completed" ? j.outcome.result : j.outcome.reason,
        j.stacktrace,
        j.attemptsMade,
        j.attempts,
        j.entry.tenant ?? "",
        j.entry.batch?.id ?? "",
        j.entry.batch?.line ?? 0,
        j.entry.batch?.customId ?? "",
        j.entry.notify ? "1" : "",
        j.entry.notify?.url ?? "",
      ]);
      const head: Arg[] = [
        c.nowMs,
        c.outboxMaxLen,
        c.keepCompletedSeconds ?? "",
        c.keepFailedSeconds ?? "",
        c.keyPrefix,
        c.cancelPrefix,
        c.cancelledReason,
      ];
      return ((await run("finishJobs", ...c.queue, ...head, ...args, c.eventsMaxLen)) as number[]).map(Number);
    },
    async takeJobs(c) {
      // Input bytes come back in the reply: Buffers, decoded field by field.
      const raw = (await runBuffer(
        "takeJobs",
        ...c.keys,
        c.keyPrefix,
        c.nowMs,
        c.lockDurationMs,
        "",
        c.cancelPrefix,
        c.inlineMaxBytes,
        ...c.tokens,
      )) as number | [RawTakenJob[], number];
      if (typeof raw === "number") return "unsupported";
      return { jobs: raw[0].map(takenJob), nextDueAt: Number(raw[1]) };
    },
    async batchRecord(keys, args) {
      return Number(await run("batchRecord", ...keys, ...batchRecordArgv(args)));
    },
    async batchSettled(keys, a) {
      return Number(await run("batchSettled", ...keys, a.tenant, a.batchId, a.maxLen, a.seal ? "1" : "", Date.now()));
    },
    async idempotencyClaim(key, first, nowMs, ttlMs, leaseUntilMs) {
      const raw = await run(
        "idempotencyClaim",
        key,
        first.id,
        first.fp,
        first.model,
        first.version,
        nowMs,
        ttlMs,
        leaseUntilMs,
      );
      return (raw ?? null) as (string | null)[] | null;
    },
    async idempotencyTakeOver(key, leaseUntilMs, nowMs) {
      return Number(await run("idempotencyTakeOver", key, leaseUntilMs, nowMs));
    },
    async idempotencyReopen(key, marker, jobId, leaseUntilMs) {
      const [attempt, kept] = (await run("idempotencyReopen", key, marker, jobId, leaseUntilMs)) as [number, number];
      return { attempt, reservationKept: kept === 1 };
    },
    async idempotencyConfirm(key) {
      return Number(await run("idempotencyConfirm", key));
    },
    async idempotencyUnclaim(key, attempt) {
      return Number(await run("idempotencyUnclaim", key, attempt));
    },
  };
}

const bound = new WeakMap<Redis | Cluster, CitadelScripts>();

/** The scripts on `redis`, defined there on the first call for that client and reused after. */
export function scripts(redis: Redis | Cluster): CitadelScripts {
  let s = bound.get(redis);
  if (!s) {
    s = bind(redis);
    bound.set(redis, s);
  }
  return s;
}
