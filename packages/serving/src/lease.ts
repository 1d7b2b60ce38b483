import { randomUUID } from "node:crypto";
import { type CitadelError, coerceError, isRetryable, type JobData, type JobResult } from "@citadel/contracts";
import {
  duplicateNamed,
  EVENTS_MAX_LEN,
  FINISH_CANCELLED,
  FINISH_SETTLED,
  type FinishedJob,
  finishJobsQueueKeys,
  formatFailure,
  keys,
  OUTBOX_MAX_LEN,
  outboxFields,
  queueName,
  queuePrefix,
  type RedisConn,
  scripts,
  settledWithin,
  type TakenJob,
  takeJobsKeys,
} from "@citadel/queue";
import type { Logger } from "@citadel/telemetry";
import { releasableCopy } from "@citadel/tensors";
import { Job, type JobsOptions, Worker } from "bullmq";

/**
 * The lease: the one place in the worker that speaks BullMQ. It fetches jobs by hand
 * (manual fetching), keeps their locks alive on a timer that inference never blocks,
 * and settles each job exactly once — completed, failed (retried only for transient
 * codes) or returned to the queue. Settling also releases the tenant's quota share
 * and drops the job's inputs once they can never be needed again (every final
 * outcome), so retention costs a result's size, not an input's.
 *
 * Round trips, not jobs, are what it economises:
 * - `fetch(n)` takes up to n jobs in one script call, takeJobs-9.lua: BullMQ's
 *   moveToActive for each job (lock, `active` event, stamps), with the metadata read,
 *   delayed-job promotion and wake-up marker once per call (~6 Redis commands a job
 *   against ~10); an empty queue costs one call that finds nothing. The same answer
 *   carries each job's input bytes and cancel flag, and only the fields of its hash
 *   the worker reads: no BullMQ Job object is built on this path.
 * - `next()` waits instead of polling: BZPOPMIN on the queue's marker (BullMQ's
 *   wake-up signal, set by every add), up to `blockSeconds`, one wait at a time, then
 *   one takeJobs call.
 * - settlements asked for in the same tick (the executor settles a run's jobs
 *   together) go out as one script call, finishJobs-9.lua: per job what BullMQ's
 *   moveToFinished does for Citadel's jobs, its inputs dropped and its outbox entry,
 *   with the shared sets' bookkeeping and the `drained` check once per batch and
 *   old-job removal about once a second (BullMQ's own script costs ~20 Redis commands
 *   per job; this one ~6, plus ~6 per batch) — never an entry for a job whose lock we
 *   lost and that runs again elsewhere.
 *
 * BullMQ internals used (bullmq 6.x, RedisQueueBackend; re-check on upgrade):
 * finishJobs-9.lua and takeJobs-9.lua mirror commands/moveToFinished-14.lua and
 * moveToActive-11.lua (tests compare their traces) and read BullMQ's hash fields by
 * their stored names (`data`, `opts`, `timestamp`, `atm`, `defa`, `stacktrace`);
 * `backend.finishedErrors` (the error a negative script answer maps to). The
 * blocking wait, retries (backoff, delayed set), requeues and lock renewal go through
 * BullMQ's public API (a retry or requeue reads the job with `Job.fromId` first).
 */

/** A job we hold the lock on, as the take handed it over. */
export interface LeasedJob {
  id: string;
  token: string;
  /** Its data as the API stored it: parsed JSON, not yet re-validated (the consumer does that). */
  data: unknown;
  /** When it was added and when this attempt started (epoch ms). */
  createdAt: number;
  startedAt: number;
  /** Attempts made before this one. */
  attemptsMade: number;
  /** What its options say (attempts allowed, keep ages). */
  opts: LeasedJobOptions;
  /** Its stack traces so far, as BullMQ stores them (JSON text). */
  stacktrace: string;
  /** Why BullMQ marked it for failure at this fetch (it stalled too often), if it did. */
  deferredFailure: string | null;
  /** Its input bytes (null when it has none), and whether a cancel was asked for before it was taken. */
  inputs: Buffer | null;
  cancelRequested: boolean;
}

/** What the lease reads of a job's BullMQ options. */
export interface LeasedJobOptions {
  attempts: number;
  /** Keep ages in seconds (BullMQ's removeOnComplete / removeOnFail `{ age }`). */
  keepCompletedSeconds: number | undefined;
  keepFailedSeconds: number | undefined;
}

export interface LeaseOptions {
  model: string;
  /** BullMQ's connection (maxRetriesPerRequest: null): takes, inputs and settlements all travel on it. */
  connection: RedisConn;
  prefix: string;
  workerId: string;
  lockDurationMs: number;
  log: Logger;
  /** Seconds a blocking fetch waits for a job before answering none (BullMQ's drainDelay). */
  blockSeconds?: number;
}

/** What one settle asks for; resolved with the job's own answer. */
type Settlement =
  | { kind: "complete"; l: LeasedJob; resultJson: string; data: JobData; done: (r: Completion) => void }
  | {
      kind: "fail";
      l: LeasedJob;
      error: CitadelError;
      data: JobData | null;
      done: (r: { final: boolean } | null) => void;
    };

/**
 * Inputs up to this size come back with the take (one round trip); larger ones are read
 * with a plain MGET after it: through Lua, Redis copies a value twice more, which cost
 * more than the round trip for inputs of a megabyte.
 */
const INLINE_INPUT_BYTES = 64 * 1024;

/** How often a settle also removes finished jobs past their keep age (retention is in hours). */
const TRIM_EVERY_MS = 1000;

/** BullMQ's keep option as finishJobs-9.lua takes it: an age in seconds, or none (kept). */
function keepAge(keep: JobsOptions["removeOnComplete"]): number | undefined {
  return typeof keep === "object" && keep !== null && "age" in keep && typeof keep.age === "number"
    ? keep.age
    : undefined;
}

/** A result's JSON with its times added as the last field (one string splice, not a second stringify). */
function withTimes(resultJson: string, at: NonNullable<JobResult["at"]>): string {
  if (!resultJson.endsWith("}")) throw new Error("a job's result must be a JSON object");
  return `${resultJson.slice(0, -1)},"at":${JSON.stringify(at)}}`;
}

/** Answers a final settlement: settled, or not (lock lost). */
function answer(s: Settlement, code: number): void {
  const settled = code === FINISH_SETTLED || code === FINISH_CANCELLED;
  if (s.kind === "complete") s.done(!settled ? null : code === FINISH_CANCELLED ? "cancelled" : "completed");
  else s.done(settled ? { final: true } : null);
}

/**
 * How a completion ended: completed, or cancelled (a cancel flag was found as it was
 * settled: the API was asked to cancel it and the worker missed the message; its result
 * is dropped); null when the lock was lost (another worker settles the job).
 */
export type Completion = "completed" | "cancelled" | null;

/** The message a job cancelled at its settle fails with (the executor's for a cancel it sees). */
export const CANCELLED_MESSAGE = "the job was cancelled";

/**
 * A job's stored data, parsed; null when it is not JSON (Redis is a trust boundary): the
 * consumer then fails that job alone as JOB_INVALID instead of the wave failing to decode.
 */
function parseData(text: string | null): unknown {
  try {
    return JSON.parse(text ?? "{}") as unknown;
  } catch {
    return null;
  }
}

function optionsOf(o: JobsOptions): LeasedJobOptions {
  return {
    attempts: o.attempts ?? 1,
    keepCompletedSeconds: keepAge(o.removeOnComplete),
    keepFailedSeconds: keepAge(o.removeOnFail),
  };
}

export class JobLease {
  private readonly worker: Worker<JobData, JobResult>;
  /** The blocking wait's own connection (a BZPOPMIN holds its connection until it answers). */
  private readonly blocking: RedisConn;
  /** Every job we hold the lock on, by id. */
  private readonly held = new Map<string, LeasedJob>();
  private lockTimer?: NodeJS.Timeout;
  /** The blocking fetch in progress, if any (BullMQ allows one wait at a time). */
  private waiting: Promise<LeasedJob[]> | null = null;
  /** Settlements waiting for this tick's pipeline. */
  private pending: Settlement[] = [];
  private closing = false;
  /** When the first delayed job is due, as a delay marker or an empty take said (0: none known). */
  private nextDue = 0;
  /** When the last settle looked for finished jobs past their keep age. */
  private trimmedAt = 0;
  /** The last options text parsed (every Citadel job of a queue has the same), and what it said. */
  private optsText = "";
  private optsParsed: LeasedJobOptions = optionsOf({});

  constructor(private readonly o: LeaseOptions) {
    this.worker = new Worker<JobData, JobResult>(queueName(o.model), null, {
      connection: o.connection,
      prefix: queuePrefix(o.prefix, o.model),
      autorun: false,
      lockDuration: o.lockDurationMs,
      stalledInterval: o.lockDurationMs,
      // A worker killed mid-batch stalls its jobs; a few such restarts are allowed, then
      // BullMQ marks the job for failure and the next fetch settles it (JOB_STALLED).
      maxStalledCount: 3,
      drainDelay: o.blockSeconds ?? 1,
    });
    this.worker.on("error", (err) => o.log.error({ err, model: o.model }, "bullmq worker error"));
    this.blocking = duplicateNamed(o.connection, `${queuePrefix(o.prefix, o.model)}:wait:${o.workerId}`);
    this.blocking.on("error", (err: Error) =>
      o.log.warn({ err: coerceError(err), model: o.model }, "blocking connection error"),
    );
    // Defines the scripts on the connection the take and the settle (takeJobs, finishJobs) go on.
    scripts(o.connection);
  }

  start(): void {
    void this.worker.startStalledCheckTimer();
    this.lockTimer = setInterval(() => void this.extendLocks(), Math.max(1000, this.o.lockDurationMs / 3));
    this.lockTimer.unref();
  }

  holds(id: string): boolean {
    return this.held.has(id);
  }

  get size(): number {
    return this.held.size;
  }

  /**
   * Up to `n` jobs, locked to us, in one wave (fewer when the queue has fewer).
   * Jobs fetched before a failed answer are kept (they are locked to us); the error is
   * thrown only when no job came back.
   */
  async fetch(n: number): Promise<LeasedJob[]> {
    if (n <= 0 || this.closing) return [];
    const tokens = Array.from({ length: n }, () => this.token());
    // The take stamps this as each job's processedOn: its result's `started`.
    const nowMs = Date.now();
    const taken = await scripts(this.o.connection).takeJobs({
      keys: takeJobsKeys(this.o.prefix, this.o.model),
      keyPrefix: keys.bull(this.o.prefix, this.o.model, ""),
      nowMs,
      lockDurationMs: this.o.lockDurationMs,
      cancelPrefix: keys.cancelRequestedPrefix(this.o.prefix, this.o.model),
      inlineMaxBytes: INLINE_INPUT_BYTES,
      tokens,
    });
    if (taken === "unsupported") return this.fetchOneByOne(n);
    if (taken.nextDueAt > 0) this.nextDue = taken.nextDueAt;
    const jobs = taken.jobs.map((t, i) => this.hold(this.leased(t, tokens[i] as string, nowMs)));
    const left = jobs.filter((_, i) => taken.jobs[i]?.inputsLeft);
    if (left.length === 0 || (await this.readInputs(left, false))) return jobs;
    return jobs.filter((l) => !left.includes(l));
  }

  /**
   * Reads jobs' input bytes (with `flags`, their cancel flags too) in one MGET: the large
   * inputs a take leaves, and everything for jobs taken through BullMQ's own script
   * (read after the take answered, a flag shows a cancel whose message came before we
   * held the job). On failure the jobs go back to the queue and false is returned.
   */
  private async readInputs(jobs: LeasedJob[], flags: boolean): Promise<boolean> {
    const { prefix, model } = this.o;
    try {
      const replies = await this.o.connection.mgetBuffer(
        ...jobs.map((l) => keys.inputs(prefix, model, l.id)),
        ...(flags ? jobs.map((l) => keys.cancelRequested(prefix, l.id)) : []),
      );
      jobs.forEach((l, i) => {
        // Copied out of the reply: the parser returns a large value as a slice of a pool it
        // shares with later replies, which the job would keep from the collector for as long
        // as its batch waits and runs (release.ts). Its own buffer goes to the runner with a
        // lone job's run, uncopied, or is freed when its batch is over (Consumer#run).
        const bytes = replies[i];
        l.inputs = bytes ? releasableCopy(bytes) : null;
        if (flags) l.cancelRequested = replies[jobs.length + i] != null;
      });
      return true;
    } catch (err) {
      this.o.log.warn({ err: coerceError(err), model }, "could not read the inputs of taken jobs; requeued");
      await Promise.all(jobs.map((l) => this.requeue(l)));
      return false;
    }
  }

  private hold(l: LeasedJob): LeasedJob {
    this.held.set(l.id, l);
    return l;
  }

  /** A taken job as the consumer holds it (its fields decoded as BullMQ's rawToJobJson does). */
  private leased(t: TakenJob, token: string, startedAt: number): LeasedJob {
    return {
      id: t.id,
      token,
      data: parseData(t.data),
      createdAt: t.timestamp,
      startedAt,
      attemptsMade: t.attemptsMade,
      opts: this.options(t.opts ?? "{}"),
      stacktrace: t.stacktrace ?? "[]",
      deferredFailure: t.deferredFailure,
      inputs: t.inputs,
      cancelRequested: t.cancelRequested,
    };
  }

  private options(text: string): LeasedJobOptions {
    if (text !== this.optsText) {
      this.optsParsed = optionsOf(JSON.parse(text) as JobsOptions);
      this.optsText = text;
    }
    return this.optsParsed;
  }

  /**
   * BullMQ's own path, for a queue whose metadata asks for what takeJobs does not do (a
   * global rate limit or concurrency): one `getNextJob` per waiting job, sent together.
   * Jobs fetched before a failed answer are kept (they are locked to us); the error is
   * thrown only when no job came back.
   */
  private async fetchOneByOne(n: number): Promise<LeasedJob[]> {
    // As many calls as jobs wait: a moveToActive that finds none still costs Redis six commands.
    const take = Math.min(n, await this.backlog());
    if (take === 0) return [];
    const answers = await Promise.allSettled(Array.from({ length: take }, () => this.take()));
    const jobs: Job<JobData, JobResult>[] = [];
    let failure: unknown;
    for (const a of answers) {
      if (a.status === "fulfilled") {
        if (a.value) jobs.push(a.value);
      } else failure ??= a.reason;
    }
    if (failure !== undefined) {
      if (jobs.length === 0) throw failure;
      this.o.log.warn({ err: coerceError(failure), model: this.o.model }, "part of a fetch failed");
    }
    if (jobs.length === 0) return [];
    const leased = jobs.map((j) =>
      this.hold({
        id: j.id as string,
        token: j.token as string,
        data: j.data,
        createdAt: j.timestamp,
        startedAt: j.processedOn ?? Date.now(),
        attemptsMade: j.attemptsMade,
        opts: optionsOf(j.opts),
        stacktrace: JSON.stringify(j.stacktrace ?? []),
        deferredFailure: j.deferredFailure ?? null,
        inputs: null,
        cancelRequested: false,
      }),
    );
    return (await this.readInputs(leased, true)) ? leased : [];
  }

  /** Jobs waiting to be taken: BullMQ's wait list and prioritized set (one round trip). */
  private async backlog(): Promise<number> {
    const { prefix, model } = this.o;
    const replies = await this.o.connection
      .pipeline()
      .llen(keys.bull(prefix, model, "wait"))
      .zcard(keys.bull(prefix, model, "prioritized"))
      .exec();
    let n = 0;
    for (const [err, count] of replies ?? []) {
      if (err) throw err;
      n += Number(count);
    }
    return n;
  }

  /**
   * The next jobs to arrive (up to `max`), waiting up to `blockSeconds` (no polling);
   * none when none came. Callers may race it against other events: it stays pending,
   * and a second call gets the same promise. Called once a fetch found the queue
   * drained, so it blocks at once: BZPOPMIN on the queue's marker (what every add sets,
   * as BullMQ's workers wait), on a connection of its own, then one takeJobs call for
   * what woke it and whatever came with it.
   */
  next(max = 1): Promise<LeasedJob[]> {
    if (this.closing) return Promise.resolve([]);
    this.waiting ??= this.waitAndTake(max).finally(() => {
      this.waiting = null;
    });
    return this.waiting;
  }

  private async waitAndTake(max: number): Promise<LeasedJob[]> {
    const marker = keys.bull(this.o.prefix, this.o.model, "marker");
    const until = Date.now() + (this.o.blockSeconds ?? 1) * 1000;
    try {
      for (;;) {
        const now = Date.now();
        if (this.closing) return [];
        if (this.nextDue > 0 && this.nextDue <= now) {
          // A delayed job (a retry after its backoff) is due: the take promotes it.
          this.nextDue = 0;
          const jobs = await this.fetch(max);
          if (jobs.length > 0) return jobs;
          continue;
        }
        const left = until - now;
        if (left <= 0) return [];
        // Until a job's marker comes, this wait ends or a delayed job is due (as BullMQ's
        // workers block until their blockUntil). Seconds, fractional (Redis ≥ 6).
        const wake = this.nextDue > 0 ? Math.min(left, this.nextDue - now) : left;
        const popped = await this.blocking.bzpopmin(marker, Math.max(0.01, wake / 1000));
        if (this.closing) return [];
        if (!popped) continue;
        // A delayed job's marker carries the time it is due; it is remembered, not put back.
        const due = Number(popped[2]);
        if (due > Date.now()) {
          this.nextDue = this.nextDue > 0 ? Math.min(this.nextDue, due) : due;
          continue;
        }
        const jobs = await this.fetch(max);
        if (jobs.length > 0) return jobs;
      }
    } catch (err) {
      if (this.closing) return [];
      throw err;
    }
  }

  private token(): string {
    return `${this.o.workerId}:${randomUUID()}`;
  }

  private async take(): Promise<Job<JobData, JobResult> | null> {
    const token = this.token();
    const job = (await this.worker.getNextJob(token, { block: false })) as Job<JobData, JobResult> | undefined;
    if (!job?.id) return null;
    job.token = token;
    return job;
  }

  /** BullMQ's Job for a job we hold (read back: retries and requeues are rare), or null when it is gone. */
  private async bullJob(l: Pick<LeasedJob, "id" | "token">): Promise<Job<JobData, JobResult> | null> {
    const job = (await Job.fromId(this.worker, l.id)) as Job<JobData, JobResult> | undefined;
    if (!job) return null;
    job.token = l.token;
    return job;
  }

  /**
   * Completes a job with its result, as the JSON of a JobResult without its times (the
   * caller has it serialised already, to check its size; the lease adds `at`). See
   * Completion for the answer.
   */
  complete(l: LeasedJob, resultJson: string, data: JobData): Promise<Completion> {
    return new Promise((done) => this.enqueue({ kind: "complete", l, resultJson, data, done }));
  }

  /**
   * Fails a job with a code; only transient codes are retried (with backoff). Returns
   * whether this was its final outcome, or null when the lock was lost.
   */
  fail(l: LeasedJob, error: CitadelError, data: JobData | null): Promise<{ final: boolean } | null> {
    return new Promise((done) => this.enqueue({ kind: "fail", l, error, data, done }));
  }

  private enqueue(s: Settlement): void {
    this.pending.push(s);
    if (this.pending.length === 1) queueMicrotask(() => void this.flush());
  }

  /** Sends this tick's settlements: final outcomes in one pipeline, retries beside it. */
  private async flush(): Promise<void> {
    const batch = this.pending;
    this.pending = [];
    const finals: Settlement[] = [];
    const retries: Promise<void>[] = [];
    for (const s of batch) {
      if (s.kind === "fail" && this.retries(s.l, s.error)) retries.push(this.retry(s.l, s.error, s.done));
      else finals.push(s);
    }
    await Promise.all([this.settleFinals(finals), ...retries]);
  }

  /** Whether BullMQ will retry this failure: a transient code with attempts left. */
  private retries(l: LeasedJob, e: CitadelError): boolean {
    return isRetryable(e.code) && l.attemptsMade + 1 < l.opts.attempts;
  }

  /** A retry goes through BullMQ's own path (backoff, delayed set); nothing is released. */
  private async retry(l: LeasedJob, e: CitadelError, done: (r: { final: boolean } | null) => void): Promise<void> {
    try {
      const job = await this.bullJob(l);
      if (!job) throw new Error("the job is gone");
      await job.moveToFailed(new Error(formatFailure(e.code, e.message)), l.token, false);
      done({ final: false });
    } catch (err) {
      this.o.log.warn({ err: coerceError(err), jobId: l.id }, "could not fail job (lock lost)");
      done(null);
    } finally {
      this.held.delete(l.id);
    }
  }

  /**
   * One script call for the whole batch (finishJobs-9.lua): per job, BullMQ's move to
   * completed/failed, its inputs dropped and its outbox entry, atomically — a worker
   * that dies after it loses no entry. A job whose lock was lost is answered alone; a
   * failed call answers every job of the batch as not settled (their locks expire and
   * BullMQ's stalled check hands them out again).
   */
  private async settleFinals(batch: Settlement[]): Promise<void> {
    if (batch.length === 0) return;
    const { prefix, model } = this.o;
    const nowMs = Date.now();
    const first = batch[0]?.l.opts;
    const trimOld = nowMs - this.trimmedAt >= TRIM_EVERY_MS;
    if (trimOld) this.trimmedAt = nowMs;
    let codes: number[];
    try {
      codes = await scripts(this.o.connection).finishJobs({
        queue: finishJobsQueueKeys(prefix, model),
        keyPrefix: keys.bull(prefix, model, ""),
        nowMs,
        outboxMaxLen: OUTBOX_MAX_LEN,
        // Citadel's API gives every job the same keep ages ({ age } in seconds); old jobs
        // are looked for about once a second, not on every batch.
        keepCompletedSeconds: trimOld ? first?.keepCompletedSeconds : undefined,
        keepFailedSeconds: trimOld ? first?.keepFailedSeconds : undefined,
        eventsMaxLen: EVENTS_MAX_LEN,
        cancelPrefix: keys.cancelRequestedPrefix(prefix, model),
        cancelledReason: formatFailure("CANCELLED", CANCELLED_MESSAGE),
        jobs: batch.map((s) => this.finished(s, nowMs)),
      });
    } catch (err) {
      this.o.log.error({ err: coerceError(err), model, jobs: batch.length }, "could not settle a batch");
      codes = batch.map(() => NaN);
    }
    for (const [i, s] of batch.entries()) {
      this.held.delete(s.l.id);
      const code = codes[i] ?? NaN;
      if (code !== FINISH_SETTLED && code !== FINISH_CANCELLED) {
        const what = s.kind === "complete" ? "complete" : "fail";
        const err = Number.isNaN(code)
          ? new Error("the settle call failed")
          : this.worker.backend.finishedErrors({ code, jobId: s.l.id, command: "moveToFinished", state: "active" });
        this.o.log.warn({ err: coerceError(err), jobId: s.l.id }, `could not ${what} job (lock lost)`);
      }
      answer(s, code);
    }
  }

  /**
   * A settlement as finishJobs-9.lua takes it. A completed job's result carries its times,
   * the finish time chosen here: the completion event then holds everything the job's
   * final view shows (an API waiting for the job answers without reading it back).
   */
  private finished(s: Settlement, nowMs: number): FinishedJob {
    const l = s.l;
    const outcome: FinishedJob["outcome"] =
      s.kind === "complete"
        ? {
            status: "completed",
            result: withTimes(s.resultJson, { created: l.createdAt, started: l.startedAt, finished: nowMs }),
          }
        : { status: "failed", reason: formatFailure(s.error.code, s.error.message) };
    const id = l.id;
    return {
      id,
      token: l.token,
      outcome,
      stacktrace: l.stacktrace,
      attemptsMade: l.attemptsMade + 1,
      attempts: l.opts.attempts,
      entry: outboxFields(s.data),
    };
  }

  /** Returns a job to the wait list (shutdown): another worker runs it. */
  async requeue(l: Pick<LeasedJob, "id" | "token">): Promise<void> {
    try {
      await (await this.bullJob(l))?.moveToWait(l.token);
    } catch (err) {
      this.o.log.warn(
        { err: coerceError(err), jobId: l.id },
        "could not return job to the queue (its lock will expire and it will be retried)",
      );
    } finally {
      this.held.delete(l.id);
    }
  }

  /**
   * Stops fetching, interrupts a blocking wait, and returns every job still held
   * (one that arrived during the wait included) to the queue.
   */
  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.lockTimer);
    // Closing the worker cuts its blocking connection: a pending wait ends now. Our
    // connection is shared (BullMQ does not close it), so requeueing still works after.
    // Bounded: on a Redis Cluster that went down and came back, BullMQ may never settle
    // its close or a blocking fetch the closed worker had open; shutdown must not wait on them.
    this.blocking.disconnect();
    await settledWithin(2000, [this.worker.close(true)]);
    await settledWithin(2000, [this.waiting ?? undefined]);
    for (const l of [...this.held.values()]) await this.requeue(l);
  }

  private async extendLocks(): Promise<void> {
    if (this.held.size === 0) return;
    const all = [...this.held.values()];
    try {
      await this.worker.extendJobLocks(
        all.map((l) => l.id),
        all.map((l) => l.token),
        this.o.lockDurationMs,
      );
    } catch (err) {
      this.o.log.error({ err: coerceError(err), model: this.o.model }, "lock extension failed");
    }
  }
}
