import { CitadelError, ErrorCode, type JobData, type JobResult, type JobView, type Priority } from "@citadel/contracts";
import { type Job, Queue, QueueEvents } from "bullmq";
import type { Cluster, Redis } from "ioredis";
import { setInPlace } from "./large-set.js";
import { INPUTS_GRACE_MS, keys, modelOfJobId, queueName, queuePrefix } from "./names.js";
import { applyOutcome, type OutboxEntry } from "./outbox.js";
import { settledWithin } from "./redis.js";
import { scriptOn, scripts, settleFinalArgv } from "./scripts/index.js";
import { settleFinalCall } from "./settle-calls.js";

export interface QueueSettings {
  prefix: string;
  /** Completed jobs (and their results) are kept this long. */
  resultTtlMs: number;
  /** Failed and cancelled jobs stay visible this long (dead-letter retention). */
  failedTtlMs: number;
  /** Attempts for transient runtime failures (1 = never retry). */
  attempts: number;
  backoffMs: number;
}

/** BullMQ's largest priority: 'low' jobs wait behind every normal one. */
export const LOW_PRIORITY = 2 ** 21 - 1;

/**
 * Priority without hiding work from the autoscaler (KEDA counts the wait list and the
 * prioritized set): `high` goes to the head of the wait list (LIFO), which workers take
 * first; `normal` to BullMQ's prioritized set at priority 1, where the take orders it by
 * fair shares between tenants (takeJobs-9.lua); `low` to the same set behind all of them.
 */
export function priorityOptions(p: Priority): { lifo?: boolean; priority?: number } {
  switch (p) {
    case "high":
      return { lifo: true };
    case "normal":
      return { priority: 1 };
    case "low":
      return { priority: LOW_PRIORITY };
  }
}

/** "CODE: message" is how failures are stored in BullMQ's failedReason. */
export function formatFailure(code: ErrorCode, message: string): string {
  return `${code}: ${message}`;
}

export function parseFailure(reason: string | undefined): { code: string; message: string } {
  const m = /^([A-Z_]+): ([\s\S]*)$/.exec(reason ?? "");
  if (m && ErrorCode.safeParse(m[1]).success) return { code: m[1] as string, message: m[2] ?? "" };
  return { code: "INTERNAL", message: "the job failed" };
}

/**
 * How long closing a Queue or QueueEvents may wait on Redis before its connection is
 * cut: after a Redis Cluster outage BullMQ's close can wait forever on a blocking read.
 */
const CLOSE_WAIT_MS = 2000;
/** Tries at starting a model's event listener before a follower is answered 503. */
const LISTENER_ATTEMPTS = 3;
/** Inputs from this size up are written as commands of their own, not in a pipeline. */
const LARGE_INPUT_BYTES = 64 * 1024;

const iso = (ms: number | undefined) => (ms ? new Date(ms).toISOString() : undefined);

/**
 * The API's view of the per-model BullMQ queues. A Queue (and, for long-polls, a
 * QueueEvents with its own Redis connection) is created per model on first use, so
 * job ids are looked up only for published models: an id naming any other model is
 * not found before anything is created (job ids carry their model, and anyone can
 * make one up). `retain` closes what belongs to models no longer published.
 */
export class JobQueues {
  private readonly queues = new Map<string, Queue<JobData, JobResult>>();
  private readonly events = new Map<string, Listener>();
  private readonly waiters = new Map<string, Set<(f: JobFinish | null) => void>>();
  /** Watchers of a job's move to active (event streams), by job id. */
  private readonly activeWatchers = new Map<string, Set<() => void>>();
  /** Ids whose final event came with no one waiting: a waiter arriving just after reads the job. */
  private readonly finished = new RecentIds(10_000);
  /** Set by endWaits (shutdown): a wait returns the job's state at once. */
  private waitsEnded = false;
  /** Called with the model on every final event a listener hears (the outbox relay's nudge). */
  private finalListener: ((model: string) => void) | undefined;

  constructor(
    private readonly connection: Redis | Cluster,
    /** A separate connection factory for QueueEvents' blocking reads. */
    private readonly blockingConnection: () => Redis | Cluster,
    private readonly redis: Redis | Cluster,
    readonly settings: QueueSettings,
    /** Models whose jobs may be looked up (the API passes its catalog); none without it. */
    private readonly isPublished: (model: string) => boolean = () => false,
    /** How long after a listener starts a waiter also reads the job (events before it are not seen). */
    private readonly eventsWarmupMs = 5000,
  ) {}

  /** How many Queue and QueueEvents objects are held (each QueueEvents holds a Redis connection). */
  cached(): { queues: number; events: number } {
    return { queues: this.queues.size, events: this.events.size };
  }

  /** Calls `listener` with the model on every final event (completed, failed, removed) this process hears. */
  onFinalEvent(listener: (model: string) => void): void {
    this.finalListener = listener;
  }

  /** Whether this process listens to the model's events now (its final events reach onFinalEvent). */
  follows(model: string): boolean {
    return this.events.get(model)?.live === true;
  }

  /** Jobs someone waits on or follows now (each entry holds listeners until its waiter lets go). */
  watched(): { finals: number; actives: number } {
    return { finals: this.waiters.size, actives: this.activeWatchers.size };
  }

  /**
   * Closes the queues and event listeners of models not in `published` (a model taken
   * out of the registry), so the caches hold published models only.
   */
  async retain(published: Iterable<string>): Promise<void> {
    const keep = new Set(published);
    const gone = [...new Set([...this.queues.keys(), ...this.events.keys()])].filter((m) => !keep.has(m));
    for (const model of gone) {
      const q = this.queues.get(model);
      const l = this.events.get(model);
      this.queues.delete(model);
      this.events.delete(model);
      await settledWithin(CLOSE_WAIT_MS, [q?.close(), l?.ev?.close()]);
      await settledWithin(CLOSE_WAIT_MS, [l?.ev?.disconnect()]);
      l?.conn.disconnect();
    }
  }

  /** The model a job id names, when its jobs may be looked up; otherwise the job is not found. */
  private modelOf(id: string): string {
    const model = modelOfJobId(id);
    if (!this.isPublished(model)) throw new CitadelError("JOB_NOT_FOUND", "no such job");
    return model;
  }

  /**
   * Whether a job with this id ever reached the queue and is still accounted for: its
   * BullMQ hash exists (any state) or its cancellation left a tombstone. Reads keys
   * only; creates no Queue, whatever model the id names.
   */
  async exists(id: string): Promise<boolean> {
    const model = modelOfJobId(id);
    // Two single-key reads: under a per-model hash tag the two keys sit in different slots.
    if ((await this.redis.exists(keys.job(this.settings.prefix, model, id))) > 0) return true;
    return (await this.redis.exists(keys.cancelled(this.settings.prefix, id))) > 0;
  }

  queue(model: string): Queue<JobData, JobResult> {
    let q = this.queues.get(model);
    if (!q) {
      q = new Queue<JobData, JobResult>(queueName(model), {
        connection: this.connection,
        prefix: queuePrefix(this.settings.prefix, model),
      });
      this.queues.set(model, q);
    }
    return q;
  }

  private jobOptions(id: string, priority: Priority) {
    return {
      jobId: id,
      attempts: this.settings.attempts,
      backoff: { type: "exponential" as const, delay: this.settings.backoffMs },
      removeOnComplete: { age: Math.ceil(this.settings.resultTtlMs / 1000) },
      removeOnFail: { age: Math.ceil(this.settings.failedTtlMs / 1000) },
      // Stack traces would show server paths on the board; the reason code is enough.
      stackTraceLimit: 0,
      ...priorityOptions(priority),
    };
  }

  /**
   * Adds jobs: first their input bytes (one pipeline), then the jobs (BullMQ's addBulk,
   * one transaction), so no worker can see a job whose inputs are not there. Inputs
   * written for jobs that then fail to be added expire after their deadline. Re-adding
   * an id is a no-op (its inputs are the same bytes: an idempotent retry sends them again).
   * A lone job (most requests) takes neither pipeline: ioredis copies every script defined
   * on a client onto each pipeline it creates (BullMQ defines ~60), ~50 µs and ~30 KB of
   * garbage per request for nothing to batch.
   */
  async enqueueMany(model: string, items: EnqueueItem[]): Promise<void> {
    const [only] = items;
    if (items.length === 1 && only) {
      await this.storeInputs(model, only);
      this.finished.delete(only.id);
      await this.queue(model).add(JOB_NAME, only.data, this.jobOptions(only.id, only.priority));
      return;
    }
    const write = this.redis.pipeline();
    const large: Promise<unknown>[] = [];
    for (const i of items) {
      // A pipeline concatenates every command into one buffer before writing it: large
      // inputs go as commands of their own, written as they are (large-set.ts).
      if (i.inputs.byteLength >= LARGE_INPUT_BYTES) large.push(this.storeInputs(model, i));
      else write.set(...this.inputsSet(model, i));
    }
    const [written] = await Promise.all([write.length ? write.exec() : [], Promise.all(large)]);
    for (const [err] of written ?? []) if (err) throw err;
    // An id enqueued again (an Idempotency-Key retry of a job a failover lost) is not finished any more.
    for (const i of items) this.finished.delete(i.id);
    await this.queue(model).addBulk(
      items.map((i) => ({ name: JOB_NAME, data: i.data, opts: this.jobOptions(i.id, i.priority) })),
    );
  }

  /** Stores a job's input bytes until past its deadline: large ones written as they are (large-set.ts). */
  private storeInputs(model: string, i: EnqueueItem): Promise<unknown> {
    const [key, value, ...rest] = this.inputsSet(model, i);
    if (value.byteLength < LARGE_INPUT_BYTES) return this.redis.set(key, value, ...rest);
    return setInPlace(this.redis, key, value, ...rest);
  }

  /** The SET that stores a job's input bytes until past its deadline. */
  private inputsSet(model: string, i: EnqueueItem) {
    return [
      keys.inputs(this.settings.prefix, model, i.id),
      i.inputs,
      "PXAT",
      i.data.deadline + INPUTS_GRACE_MS,
    ] as const;
  }

  /** A job visible to `tenant`, or JOB_NOT_FOUND (another tenant's job is not found). */
  async find(id: string, tenant: string): Promise<Job<JobData, JobResult> | null> {
    const model = this.modelOf(id);
    const job = await this.queue(model).getJob(id);
    if (job && job.data.tenant !== tenant) throw new CitadelError("JOB_NOT_FOUND", "no such job");
    return job ?? null;
  }

  async view(id: string, tenant: string): Promise<JobView> {
    const model = this.modelOf(id);
    const q = this.queue(model);
    // State first, then the hash: a job that fails in between still shows its reason
    // (the other order could pair "failed" with a hash read before failedReason was set).
    // The hash's fields only: a status poll never reads a job's input bytes (a key of their own).
    const state = await q.getJobState(id);
    const [data, ts, processedOn, finishedOn, returnvalue, failedReason] = await this.redis.hmget(
      q.toKey(id),
      "data",
      "timestamp",
      "processedOn",
      "finishedOn",
      "returnvalue",
      "failedReason",
    );
    const owner = data ? ownerOf(data) : null;
    if (!owner || state === "unknown") return this.tombstone(id, tenant);
    if (owner.tenant !== tenant) throw new CitadelError("JOB_NOT_FOUND", "no such job");
    const base = {
      id,
      model,
      version: owner.version,
      ...labelsOf(owner),
      createdAt: iso(Number(ts)) ?? new Date(0).toISOString(),
      ...(processedOn ? { startedAt: iso(Number(processedOn)) } : {}),
      ...(finishedOn ? { finishedAt: iso(Number(finishedOn)) } : {}),
    };
    if (state === "completed" && returnvalue) {
      const { workerId: _w, artifactSha256: _a, at: _t, ...result } = JSON.parse(returnvalue) as JobResult;
      return { ...base, status: "completed", result };
    }
    if (state === "failed") {
      const error = parseFailure(failedReason ?? undefined);
      return { ...base, status: error.code === "CANCELLED" ? "cancelled" : "failed", error };
    }
    return { ...base, status: state === "active" ? "active" : "queued" };
  }

  private async tombstone(id: string, tenant: string): Promise<JobView> {
    const tomb = await this.redis.get(keys.cancelled(this.settings.prefix, id));
    if (tomb) {
      const t = JSON.parse(tomb) as JobView & { tenant: string };
      if (t.tenant === tenant) {
        return {
          id: t.id,
          status: t.status,
          model: t.model,
          version: t.version,
          ...(t.custom_id !== undefined ? { custom_id: t.custom_id } : {}),
          ...(t.metadata !== undefined ? { metadata: t.metadata } : {}),
          createdAt: t.createdAt,
          finishedAt: t.finishedAt,
        };
      }
    }
    throw new CitadelError("JOB_NOT_FOUND", "no such job");
  }

  /**
   * Cancels a job: a queued one is removed and leaves a tombstone (so it ends
   * "cancelled", never vanishes); an active one is flagged and its worker aborts it.
   */
  async cancel(
    id: string,
    tenant: string,
  ): Promise<{ status: "cancelled" | "cancelling" | JobView["status"]; removed?: { model: string; version: string } }> {
    const job = await this.find(id, tenant);
    if (!job) {
      await this.view(id, tenant);
      return { status: "cancelled" };
    }
    const state = await job.getState();
    if (state === "completed" || state === "failed") return { status: toView(job, state).status };
    if (state !== "active" && (await removeUnlessLocked(job))) {
      // Removed by this call (at most one caller succeeds): tombstone, outbox entry, wake waiters.
      const finishedAt = Date.now();
      const view: JobView & { tenant: string } = {
        id,
        tenant,
        status: "cancelled",
        model: job.data.model,
        version: job.data.version,
        ...labelsOf(job.data),
        createdAt: new Date(job.timestamp).toISOString(),
        finishedAt: new Date(finishedAt).toISOString(),
      };
      // One transaction in the queue's slot: the tombstone, and the settlement a worker would
      // have written (inputs dropped; the outbox entry that releases the quota share and
      // records the batch line and notification).
      const call = settleFinalCall(this.settings.prefix, job.data.model, id, job.data, {
        status: "cancelled",
        finishedAt,
      });
      scripts(this.redis);
      const tx = this.redis
        .multi()
        .set(keys.cancelled(this.settings.prefix, id), JSON.stringify(view), "PX", this.settings.failedTtlMs);
      scriptOn(tx, "settleFinal", call.keys, settleFinalArgv(call.args));
      for (const [err] of (await tx.exec()) ?? []) if (err) throw err;
      // Its share and batch line now too, so the canceller's next read sees them (the relay
      // applying the same entry later changes nothing); the notification is left to the relay.
      await applyOutcome(this.redis, this.settings.prefix, cancelledEntry(id, job.data, finishedAt), {
        notify: false,
      });
      this.notify(id, null);
      return { status: "cancelled", removed: { model: job.data.model, version: job.data.version } };
    }
    await this.redis
      .multi()
      .set(keys.cancelRequested(this.settings.prefix, id), "1", "PX", this.settings.failedTtlMs)
      .publish(keys.cancelChannel(this.settings.prefix), id)
      .exec();
    return { status: "cancelling" };
  }

  /**
   * Resolves when the job finishes or `ms` pass, whichever is first. A completed job's
   * view is built from its completion event (its result carries its times), so a waiter
   * reads the job at most once, before subscribing; `submitted` (the submitting request
   * itself, which knows the job is its tenant's, of that version, and not final yet)
   * skips that read too. Failures and cancellations are read back (they are rare and
   * their events carry no times).
   */
  async waitForFinish(
    id: string,
    tenant: string,
    ms: number,
    opts: { submitted?: { version: string; custom_id?: string; metadata?: Record<string, string> } } = {},
  ): Promise<JobView> {
    const model = this.modelOf(id);
    if (this.waitsEnded) ms = 0;
    const first = opts.submitted && ms > 0 ? undefined : await this.view(id, tenant);
    if (first && (ms <= 0 || isFinal(first.status))) return first;
    const version = first?.version ?? opts.submitted?.version ?? "";
    const fresh = await this.ensureEvents(model);
    const finish = await new Promise<JobFinish | null>((resolve) => {
      const set = this.waiters.get(id) ?? new Set();
      this.waiters.set(id, set);
      const done = (f: JobFinish | null) => {
        clearTimeout(timer);
        set.delete(done);
        if (set.size === 0) this.waiters.delete(id);
        resolve(f);
      };
      const timer = setTimeout(() => done(null), ms);
      set.add(done);
      // Waits ended while this one read the job or started its listener.
      if (this.waitsEnded) done(null);
      else if (this.finished.has(id)) {
        // Its event came before this waiter did: read the outcome — unless the job was
        // enqueued again since under its id (an Idempotency-Key retry after a failover lost
        // it): then the hint is stale and the waiter waits for the new run's event.
        void this.view(id, tenant).then(
          (v) => (isFinal(v.status) ? done(null) : this.finished.delete(id)),
          () => done(null),
        );
      } else if (fresh) {
        // The listener may have started after the job finished: check once.
        void this.view(id, tenant).then(
          (v) => isFinal(v.status) && done(null),
          () => done(null),
        );
      }
    });
    const labels = first ? { customId: first.custom_id, metadata: first.metadata } : (opts.submitted ?? {});
    return (finish && completedView(id, model, version, labels, finish)) ?? this.view(id, tenant);
  }

  /**
   * Listens for a job's changes until the returned function is called: `final` on its
   * final event (with a completed job's result when the event carries it), `active` when
   * a worker takes it. For a watcher that reads the job after subscribing (no change
   * between the read and the subscription is missed). JOB_NOT_FOUND for an id naming
   * no published model.
   */
  async watch(id: string, on: { final: (f: JobFinish | null) => void; active: () => void }): Promise<() => void> {
    const model = this.modelOf(id);
    await this.ensureEvents(model);
    const finals = this.waiters.get(id) ?? new Set();
    this.waiters.set(id, finals);
    finals.add(on.final);
    const actives = this.activeWatchers.get(id) ?? new Set();
    this.activeWatchers.set(id, actives);
    actives.add(on.active);
    return () => {
      finals.delete(on.final);
      if (finals.size === 0 && this.waiters.get(id) === finals) this.waiters.delete(id);
      actives.delete(on.active);
      if (actives.size === 0 && this.activeWatchers.get(id) === actives) this.activeWatchers.delete(id);
    };
  }

  private notify(id: string, f: JobFinish | null): void {
    const set = this.waiters.get(id);
    if (!set) {
      this.finished.add(id);
      return;
    }
    for (const w of [...set]) w(f);
  }

  /**
   * Listens to the model's events (one QueueEvents per model); true while the listener
   * is young enough that events from before it started may have been missed.
   */
  private async ensureEvents(model: string): Promise<boolean> {
    // A listener that could not start is tried again, twice, within the request: a
    // connection refused or cut once (a loaded host, a Redis restarting) is not yet a 503.
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.startEvents(model);
      } catch (err) {
        if (attempt >= LISTENER_ATTEMPTS) throw err;
        await new Promise((r) => setTimeout(r, 150 * attempt));
      }
    }
  }

  private async startEvents(model: string): Promise<boolean> {
    let e = this.events.get(model);
    if (!e) {
      const l: Listener = { ev: undefined, conn: this.blockingConnection(), since: Date.now(), ready: undefined };
      l.ready = this.listen(model, l);
      this.events.set(model, l);
      e = l;
    }
    try {
      await e.ready;
    } catch (err) {
      // A listener that could not start (Redis unreachable then) is dropped, not kept:
      // its failure would otherwise answer every later follower of the model.
      if (this.events.get(model) === e) {
        this.events.delete(model);
        const failed = e;
        void settledWithin(CLOSE_WAIT_MS, [failed.ev?.close()]).then(() => failed.conn.disconnect());
      }
      throw err;
    }
    return Date.now() - e.since < this.eventsWarmupMs;
  }

  /**
   * Starts `l`'s QueueEvents from the last event already in the model's stream, so that
   * nothing written from then on is missed. BullMQ's own start (`$`, new events only)
   * comes a round trip or two after the listener is ready (its CLIENT SETNAME first), and
   * an event written in between — a job finishing just as its first follower subscribed
   * and read its state — was never delivered: that stream or wait hung to its end.
   */
  private async listen(model: string, l: Listener): Promise<void> {
    const prefix = queuePrefix(this.settings.prefix, model);
    const [last] = await l.conn.xrevrange(`${prefix}:${queueName(model)}:events`, "+", "-", "COUNT", 1);
    // Closed, or dropped for a model taken out of the registry, while that was read.
    if (this.events.get(model) !== l) throw new Error(`the event listener of '${model}' was closed as it started`);
    const ev = new QueueEvents(queueName(model), { connection: l.conn, prefix, lastEventId: last?.[0] ?? "0-0" });
    l.ev = ev;
    ev.on("completed", ({ jobId, returnvalue }) => {
      // BullMQ hands the stored string parsed (any JSON): only an object with outputs is a result.
      this.notify(jobId, { result: isResult(returnvalue) ? returnvalue : undefined });
      this.finalListener?.(model);
    });
    ev.on("failed", ({ jobId }) => {
      this.notify(jobId, null);
      this.finalListener?.(model);
    });
    ev.on("removed", ({ jobId }) => {
      this.notify(jobId, null);
      this.finalListener?.(model);
    });
    ev.on("active", ({ jobId }) => {
      for (const w of [...(this.activeWatchers.get(jobId) ?? [])]) w();
    });
    await ev.waitUntilReady();
    l.live = true;
  }

  /**
   * Ends every wait now, each answered with its job's state as a wait that ran out is,
   * and makes later waits return at once: a shutting-down API answers its long-polls
   * instead of holding its close (and the pod's grace period) for the longest of them.
   */
  endWaits(): void {
    this.waitsEnded = true;
    for (const w of this.waiters.values()) for (const done of [...w]) done(null);
  }

  async close(): Promise<void> {
    this.endWaits();
    const listeners = [...this.events.values()];
    await settledWithin(
      CLOSE_WAIT_MS,
      listeners.map((l) => l.ev?.close()),
    );
    await settledWithin(
      CLOSE_WAIT_MS,
      [...this.queues.values()].map((q) => q.close()),
    );
    await settledWithin(
      CLOSE_WAIT_MS,
      listeners.map((l) => l.ev?.disconnect()),
    );
    for (const l of listeners) l.conn.disconnect();
  }
}

/** What a job's final event tells a waiter: a completed job's result, or nothing (read the job). */
export interface JobFinish {
  result: JobResult | undefined;
}

/**
 * A completed job's view built from its completion event alone (its result carries the
 * job's times), or undefined when the event does not carry that (read the job instead).
 */
export function completedView(
  id: string,
  model: string,
  version: string,
  labels: {
    customId?: string | undefined;
    custom_id?: string | undefined;
    metadata?: Record<string, string> | undefined;
  },
  finish: JobFinish,
): JobView | undefined {
  const at = finish.result?.at;
  if (!finish.result || !at) return undefined;
  const { workerId: _w, artifactSha256: _a, at: _t, ...result } = finish.result;
  return {
    id,
    status: "completed",
    model,
    version,
    ...labelsOf(labels),
    createdAt: new Date(at.created).toISOString(),
    startedAt: new Date(at.started).toISOString(),
    finishedAt: new Date(at.finished).toISOString(),
    result,
  };
}

/** A model's event listener, since when it listens, and when it is connected. */
interface Listener {
  /** Made once the stream's last event id is read (`listen`). */
  ev: QueueEvents | undefined;
  /** Its own blocking connection: cut at close, whatever BullMQ's close did. */
  conn: Redis | Cluster;
  since: number;
  ready: Promise<unknown> | undefined;
  /** Set once its QueueEvents is ready. */
  live?: boolean;
}

function isResult(v: unknown): v is JobResult {
  return typeof v === "object" && v !== null && "outputs" in v;
}

/** The last `max` ids added (a Set in insertion order: the oldest goes first). */
class RecentIds {
  private readonly ids = new Set<string>();
  constructor(private readonly max: number) {}
  add(id: string): void {
    this.ids.delete(id);
    this.ids.add(id);
    if (this.ids.size > this.max) this.ids.delete(this.ids.values().next().value as string);
  }
  has(id: string): boolean {
    return this.ids.has(id);
  }
  delete(id: string): void {
    this.ids.delete(id);
  }
}

/**
 * BullMQ refuses to remove a job a worker holds the lock on (it throws); that race
 * (taken between getState and remove) means the job is active: cancel it there.
 */
async function removeUnlessLocked(job: Job<JobData, JobResult>): Promise<boolean> {
  try {
    await job.remove();
    return true;
  } catch (err) {
    if (/locked|lock/i.test((err as Error).message)) return false;
    throw err;
  }
}

/** The outbox entry settleFinal-3.lua writes for a job a cancel removed. */
function cancelledEntry(id: string, data: JobData, finishedAt: number): OutboxEntry {
  const record = {
    j: id,
    ...(data.customId !== undefined ? { c: data.customId } : {}),
    f: finishedAt,
    s: "cancelled",
  };
  return {
    id,
    tenant: data.tenant,
    status: "cancelled",
    finishedAt: String(finishedAt),
    ...(data.batchRef ? { batch: { ...data.batchRef, record: JSON.stringify(record) } } : {}),
  };
}

/** Every job's BullMQ name: who owns a job is in its data, which only the API writes. */
export const JOB_NAME = "infer";

/** A job to add: its data (small: no tensors) and its input bytes, stored beside it. */
export interface EnqueueItem {
  id: string;
  data: JobData;
  inputs: Buffer;
  priority: Priority;
}

/** A job's client labels (custom_id, metadata) as its view shows them, from its data (or a waiter's submit). */
function labelsOf(d: {
  customId?: string | undefined;
  custom_id?: string | undefined;
  metadata?: Record<string, string> | undefined;
}): Pick<JobView, "custom_id" | "metadata"> {
  const customId = d.customId ?? d.custom_id;
  return {
    ...(typeof customId === "string" ? { custom_id: customId } : {}),
    ...(d.metadata && typeof d.metadata === "object" ? { metadata: d.metadata } : {}),
  };
}

/** Owner, version and labels from a job's stored data (small JSON: its inputs are stored apart). */
function ownerOf(
  raw: string,
): { tenant: string; version: string; customId?: string; metadata?: Record<string, string> } | null {
  try {
    const d = JSON.parse(raw) as Partial<JobData>;
    return typeof d.tenant === "string" && typeof d.version === "string"
      ? {
          tenant: d.tenant,
          version: d.version,
          ...(typeof d.customId === "string" ? { customId: d.customId } : {}),
          ...(d.metadata ? { metadata: d.metadata } : {}),
        }
      : null;
  } catch {
    // A hash whose data is not JSON was not written by the API: no one owns it.
    return null;
  }
}

export function isFinal(s: JobView["status"]): boolean {
  return s === "completed" || s === "failed" || s === "cancelled";
}

export function toView(job: Job<JobData, JobResult>, state: string): JobView {
  const base = {
    id: job.id ?? "",
    model: job.data.model,
    version: job.data.version,
    ...labelsOf(job.data),
    createdAt: new Date(job.timestamp).toISOString(),
    ...(job.processedOn ? { startedAt: iso(job.processedOn) } : {}),
    ...(job.finishedOn ? { finishedAt: iso(job.finishedOn) } : {}),
  };
  if (state === "completed" && job.returnvalue) {
    const { workerId: _w, artifactSha256: _a, at: _t, ...result } = job.returnvalue;
    return { ...base, status: "completed", result };
  }
  if (state === "failed") {
    const error = parseFailure(job.failedReason);
    return { ...base, status: error.code === "CANCELLED" ? "cancelled" : "failed", error };
  }
  if (state === "active") return { ...base, status: "active" };
  return { ...base, status: "queued" };
}
