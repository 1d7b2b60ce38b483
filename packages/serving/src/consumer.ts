import { randomUUID } from "node:crypto";
import type { AuditSink } from "@citadel/audit";
import { CitadelError, coerceError, isRetryable, JobData, type JobResult } from "@citadel/contracts";
import { formatFailure, keys, queueName, type Redis, releaseQuota } from "@citadel/queue";
import type { Logger } from "@citadel/telemetry";
import { resolveOutputs, validateInputs } from "@citadel/tensors";
import { type Job, UnrecoverableError, Worker } from "bullmq";
import { type BatchItem, buildFeeds, compatible, outputsFor, splitResults } from "./batching.js";
import { CircuitBreaker, type CircuitOptions, type CircuitState } from "./circuit.js";
import type { WorkerMetrics } from "./metrics.js";
import type { LoadedModel, ModelHost } from "./model-host.js";

export interface ConsumerOptions {
  model: string;
  connection: Redis;
  redis: Redis;
  prefix: string;
  host: ModelHost;
  audit: AuditSink;
  metrics: WorkerMetrics;
  log: Logger;
  workerId: string;
  lockDurationMs: number;
  maxResultBytes: number;
  circuit: CircuitOptions;
  /** Batches in flight at once: one running, one being prepared. */
  maxInFlight: number;
}

/** A job we hold the lock on, validated and ready to batch. */
interface Held {
  job: Job<JobData, JobResult>;
  token: string;
  data: JobData;
  item: BatchItem;
  model: LoadedModel;
  cancelled: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const CIRCUIT_VALUE: Record<CircuitState, number> = { closed: 0, "half-open": 1, open: 2 };

/**
 * Serves one model queue: pulls jobs by hand (BullMQ manual fetching) to gather a
 * micro-batch of one model version up to max batch samples or max queue delay, runs
 * it in the model's runner, and settles every job exactly once: completed, failed
 * with a code, or cancelled. Locks are extended on a timer that inference never blocks.
 */
export class ModelConsumer {
  private readonly worker: Worker<JobData, JobResult>;
  /** Every job we hold a lock on (being prepared, batched or run), by id → token. */
  private readonly locks = new Map<string, { job: Job<JobData, JobResult>; token: string }>();
  /** Prepared jobs, for cancellation. */
  private readonly held = new Map<string, Held>();
  private readonly circuit: CircuitBreaker;
  private carry: Held | null = null;
  private running = false;
  private loopDone: Promise<void> = Promise.resolve();
  private lockTimer?: NodeJS.Timeout;
  private readonly inflight = new Set<Promise<void>>();
  /** Per held job: re-checks its batch, aborting the run once every job in it is cancelled. */
  private readonly cancelChecks = new Map<string, () => void>();
  /** Abort controllers of running batches (aborted on shutdown). */
  private readonly runningBatches = new Set<AbortController>();
  /** Cancellations that arrived for jobs we hold (possibly before they were prepared). */
  private readonly cancelled = new Set<string>();

  constructor(private readonly o: ConsumerOptions) {
    this.worker = new Worker<JobData, JobResult>(queueName(o.model), null, {
      connection: o.connection,
      prefix: o.prefix,
      autorun: false,
      lockDuration: o.lockDurationMs,
      stalledInterval: o.lockDurationMs,
      // A worker killed mid-batch stalls its jobs; allow a few such restarts before failing them.
      maxStalledCount: 3,
      drainDelay: 1,
    });
    this.worker.on("error", (err) => o.log.error({ err, model: o.model }, "bullmq worker error"));
    this.circuit = new CircuitBreaker(o.circuit, (state) => {
      o.metrics.circuitState.set({ model: o.model }, CIRCUIT_VALUE[state]);
      if (state === "open") o.audit.record("circuit.opened", { model: o.model, workerId: o.workerId });
      if (state === "closed") o.audit.record("circuit.closed", { model: o.model, workerId: o.workerId });
      o.log.warn({ model: o.model, state }, "circuit state changed");
    });
    o.metrics.circuitState.set({ model: o.model }, 0);
  }

  get circuitState(): CircuitState {
    return this.circuit.state;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    void this.worker.startStalledCheckTimer();
    this.lockTimer = setInterval(() => void this.extendLocks(), Math.max(1000, this.o.lockDurationMs / 3));
    this.lockTimer.unref();
    this.loopDone = this.loop();
  }

  /** An API DELETE reached us: abort the job if we hold it. */
  cancel(jobId: string): void {
    if (!this.locks.has(jobId)) return;
    this.cancelled.add(jobId);
    const h = this.held.get(jobId);
    if (h) h.cancelled = true;
    this.cancelChecks.get(jobId)?.();
  }

  private async loop(): Promise<void> {
    while (this.running) {
      try {
        if (!this.circuit.allow()) {
          await sleep(Math.min(this.circuit.waitMs(), 500));
          continue;
        }
        while (this.inflight.size >= this.o.maxInFlight) await Promise.race(this.inflight);
        const batch = await this.gather(this.circuit.state === "half-open");
        if (batch.length === 0) continue;
        const p: Promise<void> = this.execute(batch).finally(() => this.inflight.delete(p));
        this.inflight.add(p);
        if (this.circuit.state === "half-open") await p;
      } catch (err) {
        this.o.log.error({ err: coerceError(err), model: this.o.model }, "consumer loop error");
        await sleep(250);
      }
    }
  }

  /** Fetches one job and prepares it; settles it at once if it cannot run. */
  private async fetch(block: boolean): Promise<Held | null> {
    const token = `${this.o.workerId}:${randomUUID()}`;
    const job = (await this.worker.getNextJob(token, { block })) as Job<JobData, JobResult> | undefined;
    if (!job?.id) return null;
    const parsed = JobData.safeParse(job.data);
    if (!parsed.success) {
      await this.settleFailure(job, token, null, new CitadelError("JOB_INVALID", "job payload failed re-validation"));
      return null;
    }
    const data = parsed.data;
    this.locks.set(job.id, { job, token });
    try {
      if (Date.now() > data.deadline)
        throw new CitadelError("DEADLINE_EXCEEDED", "the job waited past its deadline and was not run");
      const model = await this.o.host.get(data.model, data.version);
      const v = validateInputs(data.inputs, model.manifest);
      if (v.batch !== data.batch) throw new CitadelError("JOB_INVALID", "job batch does not match its inputs");
      const item: BatchItem = {
        tensors: v.tensors,
        batch: v.batch,
        outputs: resolveOutputs(data.outputs, model.manifest),
        policy: data.outputPolicy,
      };
      const h: Held = { job, token, data, item, model, cancelled: this.cancelled.has(job.id) };
      this.held.set(job.id, h);
      return h;
    } catch (err) {
      await this.settleFailure(job, token, data, err);
      return null;
    }
  }

  /**
   * Gathers one batch: the first job blocks; more are taken while they fit the same
   * version, the sample bound and the first job's max queue delay.
   */
  private async gather(single: boolean): Promise<Held[]> {
    const first = this.carry ?? (await this.fetch(true));
    this.carry = null;
    if (!first) return [];
    const batch = [first];
    const m = first.model.manifest;
    let samples = first.item.batch;
    const batchable = m.inputs.some((i) => i.batchAxis !== null) && m.maxBatch > 1;
    if (single || !batchable) return batch;
    const until = performance.now() + m.maxQueueDelayMs;
    while (samples < m.maxBatch && this.running) {
      const next = await this.fetch(false);
      if (!next) {
        const left = until - performance.now();
        if (left <= 0) break;
        await sleep(Math.min(1, left));
        continue;
      }
      if (
        next.data.version !== first.data.version ||
        samples + next.item.batch > m.maxBatch ||
        !compatible(m, first.item, next.item)
      ) {
        this.carry = next;
        break;
      }
      batch.push(next);
      samples += next.item.batch;
    }
    return batch;
  }

  private async execute(batch: Held[]): Promise<void> {
    // Cancellations requested before we held the job (its pub/sub message went to no
    // one): one read for the whole batch.
    const flags = await this.o.redis.mget(batch.map((h) => keys.cancelRequested(this.o.prefix, h.job.id as string)));
    flags.forEach((f, i) => {
      const h = batch[i];
      if (f && h) h.cancelled = true;
    });
    const live = batch.filter((h) => !h.cancelled);
    for (const h of batch)
      if (h.cancelled)
        await this.settleFailure(h.job, h.token, h.data, new CitadelError("CANCELLED", "the job was cancelled"));
    const first = live[0];
    if (!first) return;
    const { manifest, runner, info } = first.model;
    const { model, version } = first.data;
    const samples = live.reduce((a, h) => a + h.item.batch, 0);
    const abort = new AbortController();
    // A batch is aborted only when every job in it was cancelled; otherwise the
    // cancelled jobs are settled as cancelled and their results dropped.
    const check = () => {
      if (live.every((h) => h.cancelled)) abort.abort();
    };
    for (const h of live) this.cancelChecks.set(h.job.id as string, check);
    this.runningBatches.add(abort);
    const start = Date.now();
    for (const h of live) this.o.metrics.queueDuration.observe({ model, version }, (start - h.data.acceptedAt) / 1000);
    try {
      const feeds = buildFeeds(
        manifest,
        live.map((h) => h.item),
      );
      const timeoutMs = Math.min(...live.map((h) => h.data.timeoutMs));
      // A batch is aborted only when every job in it was cancelled; otherwise the
      // cancelled jobs are settled as cancelled and their results dropped.
      const onCancel = () => live.every((h) => h.cancelled) && abort.abort();
      const poll = setInterval(onCancel, 50);
      let res: Awaited<ReturnType<typeof runner.run>>;
      try {
        res = await runner.run(
          feeds,
          outputsFor(
            manifest,
            live.map((h) => h.item),
          ),
          timeoutMs,
          abort.signal,
        );
      } finally {
        clearInterval(poll);
      }
      this.o.metrics.execCount.inc({ model, version });
      this.o.metrics.inferenceCount.inc({ model, version }, samples);
      this.o.metrics.computeDuration.observe({ model, version }, res.ms / 1000);
      this.o.metrics.batchSize.observe({ model }, samples);
      const perJob = splitResults(
        manifest,
        live.map((h) => h.item),
        res.outputs,
      );
      this.circuit.success();
      await Promise.all(
        live.map(async (h, k) => {
          if (h.cancelled)
            return this.settleFailure(h.job, h.token, h.data, new CitadelError("CANCELLED", "the job was cancelled"));
          const result: JobResult = {
            outputs: perJob[k] ?? {},
            provider: info.provider,
            batchSize: samples,
            queueMs: start - h.data.acceptedAt,
            inferenceMs: Math.round(res.ms * 100) / 100,
            workerId: this.o.workerId,
            artifactSha256: manifest.artifact.plaintextSha256,
          };
          if (JSON.stringify(result).length > this.o.maxResultBytes) {
            return this.settleFailure(
              h.job,
              h.token,
              h.data,
              new CitadelError("RESULT_TOO_LARGE", `result exceeds ${this.o.maxResultBytes} bytes`),
            );
          }
          return this.settleSuccess(h, result);
        }),
      );
    } catch (err) {
      const e =
        err instanceof CitadelError
          ? err
          : new CitadelError("RUNTIME_ERROR", "inference failed", undefined, { cause: coerceError(err) });
      if (e.code === "TIMEOUT") this.o.metrics.runnerRestarts.inc({ reason: "timeout" });
      if (e.code === "CANCELLED") this.o.metrics.runnerRestarts.inc({ reason: "cancelled" });
      if (e.code !== "CANCELLED") this.circuit.failure();
      await Promise.all(
        live.map((h) => {
          if (h.cancelled)
            return this.settleFailure(h.job, h.token, h.data, new CitadelError("CANCELLED", "the job was cancelled"));
          // Aborted by our own shutdown: back to the queue for another worker.
          if (!this.running && e.code === "CANCELLED") return this.requeue(h.job, h.token);
          return this.settleFailure(h.job, h.token, h.data, e);
        }),
      );
    } finally {
      for (const h of live) this.cancelChecks.delete(h.job.id as string);
      this.runningBatches.delete(abort);
    }
  }

  private async settleSuccess(h: Held, result: JobResult): Promise<void> {
    const { job, token, data } = h;
    try {
      await job.moveToCompleted(result, token, false);
      // The result is kept for its TTL; the inputs are not needed any more (status reads
      // never load them): drop them so retention costs the result's size, not the input's.
      await Promise.all([
        this.o.redis.hset(`${job.queueQualifiedName}:${job.id}`, "data", JSON.stringify({ ...data, inputs: {} })),
        releaseQuota(this.o.redis, this.o.prefix, data),
      ]);
      this.o.metrics.success.inc({ model: data.model, version: data.version });
      this.o.audit.record("job.completed", {
        ...this.auditBase(job, data),
        batchSize: result.batchSize,
        queueMs: result.queueMs,
        inferenceMs: result.inferenceMs,
        outcome: "completed",
        artifactSha256: result.artifactSha256,
        provider: result.provider,
      });
    } catch (err) {
      // Lost the lock (stalled and taken by another worker): that worker settles it.
      this.o.log.warn({ err: coerceError(err), jobId: job.id }, "could not complete job (lock lost)");
    } finally {
      this.release(job.id as string);
    }
  }

  private release(id: string): void {
    this.held.delete(id);
    this.locks.delete(id);
    this.cancelled.delete(id);
  }

  private async requeue(job: Job<JobData, JobResult>, token: string): Promise<void> {
    try {
      await job.moveToWait(token);
    } catch (err) {
      this.o.log.warn(
        { err: coerceError(err), jobId: job.id },
        "could not return job to the queue (its lock will expire and it will be retried)",
      );
    } finally {
      this.release(job.id as string);
    }
  }

  /** Fails a job with a code; only transient codes are retried by BullMQ. */
  private async settleFailure(
    job: Job<JobData, JobResult>,
    token: string,
    data: JobData | null,
    err: unknown,
  ): Promise<void> {
    const e =
      err instanceof CitadelError
        ? err
        : new CitadelError("INTERNAL", "unexpected worker error", undefined, { cause: coerceError(err) });
    const reason = formatFailure(e.code, e.message);
    const retry = isRetryable(e.code);
    try {
      await job.moveToFailed(retry ? new Error(reason) : new UnrecoverableError(reason), token, false);
      const willRetry = retry && job.attemptsMade < (job.opts.attempts ?? 1);
      const labels = { model: data?.model ?? this.o.model, version: data?.version ?? "unknown", reason: e.code };
      if (!willRetry) {
        this.o.metrics.failure.inc(labels);
        if (data) await releaseQuota(this.o.redis, this.o.prefix, data);
      }
      const event = e.code === "CANCELLED" ? "job.cancelled" : "job.failed";
      this.o.audit.record(event, {
        ...this.auditBase(job, data),
        outcome: willRetry ? "retrying" : event.slice(4),
        errorCode: e.code,
      });
      if (e.code === "INTERNAL") this.o.log.error({ err: e.cause, jobId: job.id }, "job failed unexpectedly");
    } catch (moveErr) {
      this.o.log.warn({ err: coerceError(moveErr), jobId: job.id }, "could not fail job (lock lost)");
    } finally {
      this.release(job.id as string);
    }
  }

  private auditBase(job: Job<JobData, JobResult>, data: JobData | null) {
    return {
      jobId: job.id,
      tenant: data?.tenant,
      clientIp: data?.clientIp,
      requestId: data?.requestId,
      model: data?.model ?? this.o.model,
      version: data?.version,
      batchSize: data?.batch,
      inputBytes: data?.inputBytes,
      workerId: this.o.workerId,
    };
  }

  private async extendLocks(): Promise<void> {
    if (this.locks.size === 0) return;
    const ids = [...this.locks.keys()];
    const tokens = ids.map((id) => this.locks.get(id)?.token ?? "");
    try {
      await this.worker.extendJobLocks(ids, tokens, this.o.lockDurationMs);
    } catch (err) {
      this.o.log.error({ err: coerceError(err), model: this.o.model }, "lock extension failed");
    }
  }

  /**
   * Stops pulling, lets in-flight batches finish within `graceMs`, then returns every
   * job still held to the wait list (another worker runs it; nothing is lost).
   */
  async close(graceMs: number): Promise<void> {
    this.running = false;
    const grace = sleep(graceMs).then(() => "timeout" as const);
    await Promise.race([Promise.allSettled([this.loopDone, ...this.inflight]), grace]);
    for (const a of this.runningBatches) a.abort();
    await Promise.race([Promise.allSettled([...this.inflight]), sleep(1000)]);
    for (const { job, token } of [...this.locks.values()]) await this.requeue(job, token);
    clearInterval(this.lockTimer);
    await this.worker.close(true);
  }
}
