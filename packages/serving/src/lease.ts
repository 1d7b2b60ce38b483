import { randomUUID } from "node:crypto";
import { type CitadelError, coerceError, isRetryable, type JobData, type JobResult } from "@citadel/contracts";
import { formatFailure, queueName, type Redis, releaseQuota, scripts } from "@citadel/queue";
import type { Logger } from "@citadel/telemetry";
import { type Job, UnrecoverableError, Worker } from "bullmq";

/**
 * The lease: the one place in the worker that speaks BullMQ. It fetches jobs by hand
 * (manual fetching), keeps their locks alive on a timer that inference never blocks,
 * and settles each job exactly once — completed, failed (retried only for transient
 * codes) or returned to the queue. Settling also releases the tenant's quota share
 * and drops the job's inputs once they can never be needed again (every final
 * outcome), so retention costs a result's size, not an input's.
 */

export interface LeasedJob {
  job: Job<JobData, JobResult>;
  token: string;
  id: string;
}

export interface LeaseOptions {
  model: string;
  /** BullMQ's connection (maxRetriesPerRequest: null). */
  connection: Redis;
  /** An ordinary client for quota and input bookkeeping. */
  redis: Redis;
  prefix: string;
  workerId: string;
  lockDurationMs: number;
  log: Logger;
}

export class JobLease {
  private readonly worker: Worker<JobData, JobResult>;
  /** Every job we hold the lock on, by id. */
  private readonly held = new Map<string, LeasedJob>();
  private lockTimer?: NodeJS.Timeout;
  /** Replaces a job's data with its inputs-free copy, only while the job exists (dropInputs-1.lua). */
  private readonly dropInputs: (jobKey: string, data: string) => Promise<number>;

  constructor(private readonly o: LeaseOptions) {
    this.worker = new Worker<JobData, JobResult>(queueName(o.model), null, {
      connection: o.connection,
      prefix: o.prefix,
      autorun: false,
      lockDuration: o.lockDurationMs,
      stalledInterval: o.lockDurationMs,
      // A worker killed mid-batch stalls its jobs; a few such restarts are allowed, then
      // BullMQ marks the job for failure and the next fetch settles it (JOB_STALLED).
      maxStalledCount: 3,
      drainDelay: 1,
    });
    this.worker.on("error", (err) => o.log.error({ err, model: o.model }, "bullmq worker error"));
    const { dropInputs } = scripts(o.redis);
    this.dropInputs = dropInputs;
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

  /** The next job (blocking briefly when `block`), locked to us; null when none. */
  async fetch(block: boolean): Promise<LeasedJob | null> {
    const token = `${this.o.workerId}:${randomUUID()}`;
    const job = (await this.worker.getNextJob(token, { block })) as Job<JobData, JobResult> | undefined;
    if (!job?.id) return null;
    const leased = { job, token, id: job.id };
    this.held.set(job.id, leased);
    return leased;
  }

  /** Completes a job with its result; false when the lock was lost (another worker settles it). */
  async complete(l: LeasedJob, result: JobResult, data: JobData): Promise<boolean> {
    try {
      await l.job.moveToCompleted(result, l.token, false);
    } catch (err) {
      this.o.log.warn({ err: coerceError(err), jobId: l.id }, "could not complete job (lock lost)");
      return false;
    } finally {
      this.held.delete(l.id);
    }
    await this.afterFinal(l, data);
    return true;
  }

  /**
   * Fails a job with a code; only transient codes are retried (with backoff). Returns
   * whether this was its final outcome, or null when the lock was lost.
   */
  async fail(l: LeasedJob, e: CitadelError, data: JobData | null): Promise<{ final: boolean } | null> {
    const reason = formatFailure(e.code, e.message);
    const retry = isRetryable(e.code);
    try {
      await l.job.moveToFailed(retry ? new Error(reason) : new UnrecoverableError(reason), l.token, false);
    } catch (err) {
      this.o.log.warn({ err: coerceError(err), jobId: l.id }, "could not fail job (lock lost)");
      return null;
    } finally {
      this.held.delete(l.id);
    }
    const final = !(retry && l.job.attemptsMade < (l.job.opts.attempts ?? 1));
    if (final) await this.afterFinal(l, data);
    return { final };
  }

  /**
   * A job's final outcome is recorded: its inputs go and its quota share comes back.
   * When Redis cannot do that now, the outcome stands (it is logged): the counters stay
   * high, never low, and the inputs wait for their expiry.
   */
  private async afterFinal(l: LeasedJob, data: JobData | null): Promise<void> {
    try {
      await Promise.all([
        this.dropJobInputs(l, data),
        data ? releaseQuota(this.o.redis, this.o.prefix, data.tenant, l.id) : Promise.resolve(),
      ]);
    } catch (err) {
      this.o.log.error(
        { err: coerceError(err), jobId: l.id },
        "settled job: could not drop its inputs or release its quota share",
      );
    }
  }

  /** Returns a job to the wait list (shutdown): another worker runs it. */
  async requeue(l: LeasedJob): Promise<void> {
    try {
      await l.job.moveToWait(l.token);
    } catch (err) {
      this.o.log.warn(
        { err: coerceError(err), jobId: l.id },
        "could not return job to the queue (its lock will expire and it will be retried)",
      );
    } finally {
      this.held.delete(l.id);
    }
  }

  /** Returns every job still held to the queue and closes the BullMQ worker. */
  async close(): Promise<void> {
    for (const l of [...this.held.values()]) await this.requeue(l);
    clearInterval(this.lockTimer);
    await this.worker.close(true);
  }

  private async dropJobInputs(l: LeasedJob, data: JobData | null): Promise<void> {
    const kept = data ? { ...data, inputs: {} } : {};
    await this.dropInputs(`${l.job.queueQualifiedName}:${l.id}`, JSON.stringify(kept));
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
