import type { AuditFields, AuditSink } from "@citadel/audit";
import { CitadelError, coerceError, type ErrorCode, JobData, type JobResult, publicError } from "@citadel/contracts";
import type { RedisConn } from "@citadel/queue";
import type { Logger } from "@citadel/telemetry";
import { release, resolveOutputs, unpackInputs, validateInputs } from "@citadel/tensors";
import { batchKey, canBatch, DynamicBatcher } from "./batcher.js";
import { CircuitBreaker, type CircuitOptions, type CircuitState } from "./circuit.js";
import { executeBatch, JobCancel, type Outcome, type RunJob, type RunReport } from "./executor.js";
import { JobLease, type LeasedJob } from "./lease.js";
import { noteFirstRun } from "./load-phases.js";
import type { WorkerMetrics } from "./metrics.js";
import type { LoadedModel, ModelHost } from "./model-host.js";
import { type ProbeShapes, probeFeeds, probeShapes } from "./probe.js";
import { raceOrAbort } from "./race-abort.js";

export interface ConsumerOptions {
  model: string;
  connection: RedisConn;
  prefix: string;
  host: Pick<ModelHost, "get" | "pin">;
  audit: AuditSink;
  metrics: WorkerMetrics;
  log: Logger;
  workerId: string;
  lockDurationMs: number;
  maxResultBytes: number;
  circuit: CircuitOptions;
  /**
   * Batches handed to the runner whose runs are not over: one running and one queued
   * behind it, so the runner never waits on the main thread. A batch settles after its
   * runs end, beside the next run; one more batch is fetched and validated meanwhile.
   */
  maxInFlight: number;
  /** Jobs held (locked, waiting in the batcher) before no more are fetched. */
  maxHeldJobs?: number;
}

/** What a job's audit record says of its outcome. */
type JobOutcomeFields = Pick<
  AuditFields,
  "queueMs" | "inferenceMs" | "outcome" | "errorCode" | "artifactSha256" | "provider"
>;

/** A job we hold the lock on, validated and waiting to run. */
interface Held extends RunJob {
  lease: LeasedJob;
  data: JobData;
  model: LoadedModel;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/**
 * A blocking fetch answers within its block time (1 s); one pending past this bound is
 * not waited on any more (across a Redis Cluster failover BullMQ's blocking read can
 * stay pending for good): the consumer polls the queue every STUCK_POLL_MS meanwhile.
 */
const FETCH_BOUND_MS = 5000;
const STUCK_POLL_MS = 1000;
const CIRCUIT_VALUE: Record<CircuitState, number> = { closed: 0, "half-open": 1, open: 2 };

/**
 * Serves one model queue, composing the parts: the lease (BullMQ) fetches and
 * settles, the batcher (pure) decides which jobs share a run and when, the executor
 * runs a batch and gives each job its own outcome. This file only wires them, records
 * audit and metrics, and keeps the circuit breaker.
 */
export class ModelConsumer {
  private readonly lease: JobLease;
  private readonly circuit: CircuitBreaker;
  /** One batcher per version (each version has its own manifest: max batch, delay). */
  private readonly batchers = new Map<string, DynamicBatcher<Held>>();
  /** Prepared jobs by id, for cancellation. */
  private readonly held = new Map<string, Held>();
  private running = false;
  private loopDone: Promise<void> = Promise.resolve();
  /** Batches not done (running, or settling after their runs): close() waits for them. */
  private readonly inflight = new Set<Promise<void>>();
  /** Batches whose runs are not over; each resolves when its batch frees the runner. */
  private readonly runsOpen = new Set<Promise<void>>();
  /** Aborted on shutdown: running batches are cut off and their jobs requeued. */
  private readonly shutdown = new AbortController();
  /** Cancellations that arrived for jobs we hold before they were prepared. */
  private readonly cancelled = new Set<string>();
  /** Per version, the one-sample input shapes of a job it ran: what its health probe is shaped after (probe.ts). */
  private readonly goodShapes = new Map<string, ProbeShapes>();
  private readonly maxHeld: number;
  /** The last fetch found fewer jobs than it asked for: wait for one instead of asking again. */
  private drained = false;
  /** The blocking fetch in progress, and what such fetches brought and is not admitted yet. */
  private arrival: Promise<void> | null = null;
  /** When the pending blocking fetch began (performance.now()), and whether its overrun was logged. */
  private arrivalSince = 0;
  private arrivalOverdue = false;
  private readonly arrivals: LeasedJob[] = [];
  /** Whether the last wake took fewer jobs than it asked for (the queue was left empty). */
  private arrivalsDrained = false;
  /** Aborted when close() begins: waits end at once. */
  private readonly stopping = new AbortController();

  constructor(private readonly o: ConsumerOptions) {
    this.maxHeld = o.maxHeldJobs ?? 256;
    this.lease = new JobLease({
      model: o.model,
      connection: o.connection,
      prefix: o.prefix,
      workerId: o.workerId,
      lockDurationMs: o.lockDurationMs,
      log: o.log,
    });
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
    this.lease.start();
    this.loopDone = this.loop();
  }

  /** An API DELETE reached us: settle the job as cancelled if we hold it. */
  cancel(jobId: string): void {
    if (!this.lease.holds(jobId)) return;
    const h = this.held.get(jobId);
    if (h) h.cancel.cancel();
    else this.cancelled.add(jobId);
  }

  private get heldJobs(): number {
    let n = 0;
    for (const b of this.batchers.values()) n += b.size;
    return n;
  }

  private async loop(): Promise<void> {
    while (this.running) {
      try {
        if (!this.circuit.allow()) {
          await this.idle(Math.min(this.circuit.waitMs(), 500));
          continue;
        }
        await this.admitArrivals();
        const probing = this.circuit.state === "half-open";
        const canRun = this.canRun();
        const batch = canRun ? this.nextBatch(probing || this.heldJobs >= this.maxHeld) : null;
        if (batch) {
          const p = this.dispatch(batch);
          if (probing) await p;
          continue;
        }
        // Nothing may run now: take what waits in one round trip (while the runner is
        // busy, only enough for the batch that runs next), unless the last wave found the
        // queue drained; then wait for a job, a free runner or the oldest batch's due time.
        const room = probing ? 1 - this.heldJobs : this.waveSize(canRun ? 1 : 0);
        if (room > 0 && !this.drained) {
          const jobs = await this.lease.fetch(room);
          await this.admitAll(jobs);
          this.drained = jobs.length < room;
          if (jobs.length > 0) continue;
        }
        await this.waitForWork(room, canRun);
      } catch (err) {
        this.o.log.error({ err: coerceError(err), model: this.o.model }, "consumer loop error");
        await this.idle(250);
      }
    }
  }

  /**
   * How many jobs the next fetch may take: what the roomiest batcher can still take in
   * one run (at least `least`: 1 before a job has shown its model's max batch), within
   * maxHeldJobs.
   */
  private waveSize(least: number): number {
    let n = least;
    for (const b of this.batchers.values()) n = Math.max(n, b.maxSamples - b.samples);
    return Math.min(n, this.maxHeld - this.heldJobs);
  }

  /**
   * Whether a batch may go to the runner now: fewer than maxInFlight batches with runs
   * not over, and as many again at most still settling (a slow Redis holds results in
   * memory; past that bound the runner waits for it).
   */
  private canRun(): boolean {
    return this.runsOpen.size < this.o.maxInFlight && this.inflight.size < 2 * this.o.maxInFlight;
  }

  /** Hands a batch to the runner; its run slot frees when its runs end, before it settles. */
  private dispatch(batch: Held[]): Promise<void> {
    let free = () => {};
    const slot = new Promise<void>((r) => (free = r));
    const runsEnd = () => {
      if (this.runsOpen.delete(slot)) free();
    };
    this.runsOpen.add(slot);
    const p: Promise<void> = this.run(batch, runsEnd).finally(() => {
      runsEnd();
      this.inflight.delete(p);
    });
    this.inflight.add(p);
    return p;
  }

  /**
   * Sleeps until jobs arrive (the lease's blocking wait on the queue's marker, no polling), the oldest held
   * batch is due, or the consumer stops. A wait cut short stays pending: the job it
   * brings later is admitted on a later turn.
   */
  private async waitForWork(room: number, canRun: boolean): Promise<void> {
    const fetch = room > 0;
    const waits: Promise<unknown>[] = [];
    // A batch due while the runner is busy waits for a batch to free it, not for a timer.
    let at = canRun ? (this.readyAt() ?? (fetch ? null : performance.now() + 50)) : null;
    if (!canRun) waits.push(...this.runsOpen, ...this.inflight);
    if (fetch) {
      if (!this.arrival) {
        this.arrivalSince = performance.now();
        this.arrivalOverdue = false;
        const wanted = room;
        this.arrival = this.lease.next(wanted).then(
          (jobs) => {
            this.arrival = null;
            this.arrivals.push(...jobs);
            // Fewer than asked for: the wake took all there was, no wave is worth sending.
            this.arrivalsDrained = jobs.length < wanted;
          },
          async (err: unknown) => {
            this.o.log.error({ err: coerceError(err), model: this.o.model }, "blocking fetch failed");
            await this.idle(250);
            this.arrival = null;
          },
        );
      }
      waits.push(this.arrival);
      const bound = this.arrivalSince + FETCH_BOUND_MS;
      const wake = performance.now() < bound ? bound : performance.now() + STUCK_POLL_MS;
      at = at === null ? wake : Math.min(at, wake);
    }
    let timer: NodeJS.Timeout | undefined;
    if (at !== null) waits.push(new Promise((r) => (timer = setTimeout(r, Math.max(0, at - performance.now())))));
    try {
      await raceOrAbort(waits, this.stopping.signal);
    } finally {
      clearTimeout(timer);
    }
    if (fetch && this.arrival && performance.now() >= this.arrivalSince + FETCH_BOUND_MS) {
      // Not answered in time: look at the queue directly on the next turn.
      this.drained = false;
      if (!this.arrivalOverdue) {
        this.arrivalOverdue = true;
        this.o.log.warn(
          { model: this.o.model, pendingMs: Math.round(performance.now() - this.arrivalSince) },
          "blocking fetch has not answered; polling the queue until it does",
        );
      }
    }
  }

  /** Jobs a blocking fetch brought: admitted; the queue is worth another wave unless the wake emptied it. */
  private async admitArrivals(): Promise<void> {
    if (this.arrivals.length === 0) return;
    const arrived = this.arrivals.splice(0);
    this.drained = this.arrivalsDrained;
    await this.admitAll(arrived);
  }

  /**
   * Admits a wave (the take brought each job's inputs and cancel flag), each job on its
   * own, together, so the jobs refused at once are settled in one pipeline.
   */
  private async admitAll(jobs: LeasedJob[]): Promise<void> {
    // A cancel requested before we held the job (its message went to no one) is honoured now.
    for (const l of jobs) if (l.cancelRequested) this.cancelled.add(l.id);
    await Promise.all(jobs.map((l) => this.admit(l)));
  }

  /** A pause that ends early when the consumer stops. */
  private idle(ms: number): Promise<unknown> {
    return raceOrAbort([sleep(ms)], this.stopping.signal);
  }

  private readyAt(): number | null {
    let at: number | null = null;
    for (const b of this.batchers.values()) {
      const r = b.readyAt();
      if (r !== null && (at === null || r < at)) at = r;
    }
    return at;
  }

  /**
   * The batch that may run now whose first job came first, across versions (with
   * `flush`, the oldest held one even if not due): arrival order, so no version's or
   * shape's stream of full batches holds back a job that is due.
   */
  private nextBatch(flush: boolean): Held[] | null {
    const now = performance.now();
    let best: { version: string; since: number } | null = null;
    for (const [version, b] of this.batchers) {
      const since = b.readySince(now, flush);
      if (since !== null && (!best || since < best.since)) best = { version, since };
    }
    if (!best) return null;
    return this.batchers.get(best.version)?.take(now, flush)?.items ?? null;
  }

  /** Validates a fetched job and hands it to its version's batcher; settles it at once if it cannot run. */
  private async admit(lease: LeasedJob): Promise<void> {
    if (lease.deferredFailure) {
      // BullMQ marks a job that stalled more than maxStalledCount times (its workers died
      // during its runs — possibly because of the job itself) for failure on next fetch.
      const parsed = JobData.safeParse(lease.data);
      return this.fail(
        lease,
        parsed.success ? parsed.data : null,
        new CitadelError("JOB_STALLED", "the job's worker stopped during its run too many times"),
      );
    }
    const parsed = JobData.safeParse(lease.data);
    if (!parsed.success)
      return this.fail(lease, null, new CitadelError("JOB_INVALID", "job payload failed re-validation"));
    const data = parsed.data;
    try {
      if (Date.now() > data.deadline)
        throw new CitadelError("DEADLINE_EXCEEDED", "the job waited past its deadline and was not run");
      if (data.model !== this.o.model) throw new CitadelError("JOB_INVALID", "job names another model than its queue");
      const model = await this.o.host.get(data.model, data.version);
      const { manifest } = model;
      const bytes = lease.inputs;
      if (!bytes) throw new CitadelError("JOB_INVALID", "the job's inputs are missing");
      // Defence in depth without the API's decoding: sizes against the manifest and a
      // range/NaN scan over the stored bytes (views, no copy), as the manifest demands.
      const v = validateInputs(unpackInputs(data.inputs, bytes), manifest);
      if (v.batch !== data.batch) throw new CitadelError("JOB_INVALID", "job batch does not match its inputs");
      if (data.timeoutMs > manifest.timeoutMs)
        throw new CitadelError("JOB_INVALID", "job timeout exceeds the model's limit");
      const cancel = new JobCancel();
      const h: Held = {
        id: lease.id,
        lease,
        data,
        model,
        tensors: v.tensors,
        samples: v.batch,
        outputs: resolveOutputs(data.outputs, manifest),
        ...(data.outputPolicy ? { policy: data.outputPolicy } : {}),
        timeoutMs: data.timeoutMs,
        deadline: data.deadline,
        cancel,
      };
      if (this.cancelled.delete(lease.id)) cancel.cancel();
      this.held.set(lease.id, h);
      const batchable = canBatch(manifest);
      let b = this.batchers.get(data.version);
      if (!b) {
        b = new DynamicBatcher<Held>({
          maxSamples: batchable ? manifest.maxBatch : 1,
          maxDelayMs: batchable ? manifest.maxQueueDelayMs : 0,
        });
        this.batchers.set(data.version, b);
      }
      b.add(h, batchable ? batchKey(manifest, v.tensors) : lease.id, v.batch, performance.now());
    } catch (err) {
      await this.fail(lease, data, err);
    }
  }

  /** Runs one batch; every job in it is settled, or returned to the queue, whatever fails. */
  private async run(batch: Held[], onRunsEnd: () => void): Promise<void> {
    try {
      await this.execute(batch, onRunsEnd);
    } catch (err) {
      this.o.log.error({ err: coerceError(err), model: this.o.model }, "batch failed outside its runs");
    } finally {
      // A job not settled (Redis unreachable mid-settle, a bug) goes back to the queue;
      // if Redis cannot take it now, its lock lapses and the stalled check requeues it.
      for (const h of batch) {
        if (!this.lease.holds(h.id)) continue;
        this.held.delete(h.id);
        await this.lease.requeue(h.lease);
      }
      // Every run of the batch is over: its inputs are freed now, not at the next
      // mark-compact (release.ts). A requeued job's stay in Redis.
      for (const h of batch) release(h.lease.inputs);
    }
  }

  private async execute(batch: Held[], onRunsEnd: () => void): Promise<void> {
    const first = batch[0];
    if (!first) return;
    const { model, version } = first.data;
    // Held before the first await: the host does not evict the model under this batch.
    const unpin = this.o.host.pin(model, version);
    try {
      await this.executePinned(batch, first, model, version, onRunsEnd);
    } finally {
      unpin();
    }
  }

  private async executePinned(
    batch: Held[],
    first: Held,
    model: string,
    version: string,
    onRunsEnd: () => void,
  ): Promise<void> {
    // Cancel flags were read with the take; one set since, whose message was lost (a
    // subscriber reconnecting), is found by the settle itself (finishJobs-9.lua).
    const start = Date.now();
    for (const h of batch) this.o.metrics.queueDuration.observe({ model, version }, (start - h.data.acceptedAt) / 1000);
    let loaded = first.model;
    // After a failed run the runner may have been cut off: ask the host again (it reloads).
    const current = async () => {
      if (!loaded.runner.alive) loaded = await this.o.host.get(model, version);
      return loaded;
    };
    const shapesKey = `${model}@${version}`;
    const summary = await executeBatch(batch, {
      model: current,
      settle: (job, outcome) => {
        if (outcome.ok && !this.goodShapes.has(shapesKey))
          this.goodShapes.set(shapesKey, probeShapes(loaded.manifest, job.tensors));
        return this.settle(job as Held, outcome, start, loaded);
      },
      modelWorks: async (job) => {
        const m = await current();
        return this.probe(m, this.goodShapes.get(shapesKey) ?? probeShapes(m.manifest, job.tensors), job.id);
      },
      onRun: (r) => {
        this.onRun(r, model, version);
        if (r.ok && loaded.phases && loaded.phases.firstRun === undefined)
          noteFirstRun(loaded.phases, r.ms, { metrics: this.o.metrics, log: this.o.log, model, version });
      },
      shutdown: this.shutdown.signal,
      onRunsEnd,
    });
    // A batch in which any run succeeded, or whose lone failing job the model's probe
    // blamed on its input, had bad inputs, not a bad model; only batches where every run
    // failed and the probe failed too count against the model.
    if (summary.okRuns > 0 || summary.inputFaults > 0) this.circuit.success();
    else if (summary.failedRuns > 0) this.circuit.failure();
  }

  /** Runs the model's health probe (probe.ts) in `shapes`: whether it runs, logged with the job that failed alone. */
  private async probe(m: LoadedModel, shapes: ProbeShapes, jobId: string): Promise<boolean> {
    const feeds = probeFeeds(m.manifest, shapes);
    const outputs = m.manifest.outputs.map((out) => out.name);
    const works =
      feeds !== null &&
      (await m.runner.run(feeds, outputs, m.manifest.timeoutMs, this.shutdown.signal).then(
        () => true,
        () => false,
      ));
    const { name: model, version } = m.manifest;
    this.o.log.warn({ model, version, jobId, modelWorks: works }, "a job failed alone: the model probed");
    return works;
  }

  private onRun(r: RunReport, model: string, version: string): void {
    if (r.ok) {
      this.o.metrics.execCount.inc({ model, version });
      this.o.metrics.inferenceCount.inc({ model, version }, r.samples);
      this.o.metrics.computeDuration.observe({ model, version }, r.ms / 1000);
      this.o.metrics.batchSize.observe({ model }, r.samples);
      return;
    }
    const code = r.error?.code;
    if (code === "TIMEOUT") this.o.metrics.runnerRestarts.inc({ reason: "timeout" });
    this.o.log.warn(
      { model, version, code, jobs: r.jobs, split: r.bisected === true, reason: r.error?.message },
      "run failed",
    );
  }

  private async settle(h: Held, outcome: Outcome, start: number, loaded: LoadedModel): Promise<void> {
    this.held.delete(h.id);
    if (!outcome.ok) {
      if (outcome.requeue) return this.lease.requeue(h.lease);
      return this.fail(h.lease, h.data, outcome.error);
    }
    const { manifest, info } = loaded;
    const result: JobResult = {
      outputs: outcome.outputs,
      provider: info.provider,
      // The job's own samples: the run's size would tell a tenant how much others sent.
      batchSize: h.samples,
      queueMs: start - h.data.acceptedAt,
      inferenceMs: outcome.inferenceMs,
      workerId: this.o.workerId,
      artifactSha256: manifest.artifact.plaintextSha256,
    };
    // Serialised once: its size is checked here and the lease stores this text.
    const resultJson = JSON.stringify(result);
    if (resultJson.length > this.o.maxResultBytes) {
      return this.fail(
        h.lease,
        h.data,
        new CitadelError("RESULT_TOO_LARGE", `result exceeds ${this.o.maxResultBytes} bytes`),
      );
    }
    const completion = await this.lease.complete(h.lease, resultJson, h.data);
    if (completion === null) return;
    // A cancel whose message we missed, found as the result was settled: the job failed CANCELLED.
    if (completion === "cancelled") return this.recordFailure(h.lease, h.data, "CANCELLED", true);
    this.o.metrics.success.inc({ model: h.data.model, version: h.data.version });
    this.o.audit.record(
      "job.completed",
      this.auditFields(h.lease, h.data, {
        queueMs: result.queueMs,
        inferenceMs: result.inferenceMs,
        outcome: "completed",
        artifactSha256: result.artifactSha256,
        provider: result.provider,
      }),
    );
  }

  /**
   * Fails a job with its code. The tenant sees the code and a fixed message for
   * failures inside the fleet (onnxruntime's text names nodes and shapes; provider
   * errors name paths); the details stay in this log.
   */
  private async fail(lease: LeasedJob, data: JobData | null, err: unknown): Promise<void> {
    this.held.delete(lease.id);
    this.cancelled.delete(lease.id);
    const e =
      err instanceof CitadelError
        ? err
        : new CitadelError("INTERNAL", "unexpected worker error", undefined, { cause: coerceError(err) });
    const shown = publicError(e);
    if (shown.message !== e.message || e.code === "INTERNAL")
      this.o.log.warn({ jobId: lease.id, code: e.code, reason: e.message, err: e.cause }, "job failed");
    const r = await this.lease.fail(lease, new CitadelError(shown.code, shown.message), data);
    if (r) this.recordFailure(lease, data, e.code, r.final);
  }

  /** A failure that was settled: its metric when final, and its audit record (cancelled, failed or retrying). */
  private recordFailure(lease: LeasedJob, data: JobData | null, code: ErrorCode, final: boolean): void {
    const labels = { model: data?.model ?? this.o.model, version: data?.version ?? "unknown", reason: code };
    if (final) this.o.metrics.failure.inc(labels);
    const event = code === "CANCELLED" ? "job.cancelled" : "job.failed";
    this.o.audit.record(
      event,
      this.auditFields(lease, data, { outcome: final ? event.slice(4) : "retrying", errorCode: code }),
    );
  }

  /** A job's audit fields, in one object literal (one record per job: no spreads on this path). */
  private auditFields(lease: LeasedJob, data: JobData | null, outcome: JobOutcomeFields): AuditFields {
    return {
      jobId: lease.id,
      tenant: data?.tenant,
      clientIp: data?.clientIp,
      requestId: data?.requestId,
      model: data?.model ?? this.o.model,
      version: data?.version,
      batchSize: data?.batch,
      inputBytes: data?.inputBytes,
      workerId: this.o.workerId,
      queueMs: outcome.queueMs,
      inferenceMs: outcome.inferenceMs,
      outcome: outcome.outcome,
      errorCode: outcome.errorCode,
      artifactSha256: outcome.artifactSha256,
      provider: outcome.provider,
    };
  }

  /**
   * Stops pulling, lets in-flight batches finish within `graceMs`, then cuts off what
   * still runs and returns every job still held to the wait list (another worker runs
   * it; nothing is lost).
   */
  async close(graceMs: number): Promise<void> {
    this.running = false;
    this.stopping.abort();
    const grace = sleep(graceMs).then(() => "timeout" as const);
    await Promise.race([Promise.allSettled([this.loopDone, ...this.inflight]), grace]);
    this.shutdown.abort();
    await Promise.race([Promise.allSettled([...this.inflight]), sleep(1000)]);
    this.batchers.clear();
    this.held.clear();
    await this.lease.close();
  }
}
