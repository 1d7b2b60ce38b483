import { createHash, randomBytes } from "node:crypto";
import type { AuditSink } from "@citadel/audit";
import {
  type BatchRef,
  CitadelError,
  coerceError,
  type JobData,
  type JobRequest,
  type JobStatus,
  type JobView,
} from "@citadel/contracts";
import { isRedisUnavailable, type JobQueues, jobIdFor, type RedisConn, type TokenBucketCharge } from "@citadel/queue";
import type { Counter, Logger } from "@citadel/telemetry";
import { allowsModel, type Tenant } from "@citadel/tenants";
import { mergePolicies, packInputs, resolveOutputs, type TensorInput, validateInputs } from "@citadel/tensors";
import { type CallbackPolicy, notifyFor } from "./callbacks.js";
import type { ModelCatalog } from "./catalog.js";
import type { DenialAggregator } from "./denials.js";
import { type IdempotencyEntry, IdempotencyStore } from "./idempotency.js";
import type { RateLimiter } from "./limits.js";
import { type QuotaClaim, TenantQuota } from "./quota.js";

/** Random bytes drawn per job id: 18 (144 bits), from a pool filled 256 ids at a time. */
const ID_BYTES = 18;
let idPool = Buffer.alloc(0);
let idOffset = 0;

/**
 * A job id's random part (24 base64url characters). One `randomBytes` call per 256 ids
 * instead of one per id: a bulk request of 500 jobs made 500 calls into OpenSSL (as
 * `crypto.randomUUID` pools its entropy, for the same reason).
 */
function randomToken(): string {
  if (idOffset + ID_BYTES > idPool.length) {
    idPool = randomBytes(ID_BYTES * 256);
    idOffset = 0;
  }
  const token = idPool.toString("base64url", idOffset, idOffset + ID_BYTES);
  idOffset += ID_BYTES;
  return token;
}

export interface SubmitContext {
  tenant: Tenant;
  requestId: string;
  clientIp: string;
  idempotencyKey?: string;
}

/** A job request with its inputs in any form validation accepts: JSON tensors, or raw bytes from a binary body. */
export type SubmitRequest = Omit<JobRequest, "inputs"> & {
  inputs: Readonly<Record<string, TensorInput>>;
  /** Set by a batch's ingest (never by a client): the batch and line whose outcome the worker records. */
  batchRef?: BatchRef;
};

/** The answer for a submitted job: "queued" when new, its current status when an Idempotency-Key replay names it. */
export interface Accepted {
  id: string;
  status: JobStatus;
  model: string;
  version: string;
}

export interface SubmitSettings {
  prefix: string;
  queueTtlMs: number;
  maxQueueDepth: number;
  maxTenantQueuedBytes: number;
  idempotencyTtlMs: number;
  /** Bound on one enqueue round trip before answering 503. */
  enqueueTimeoutMs: number;
  /** The smallest timeoutMs a job may ask for (lowered to the manifest's timeout when that is smaller). */
  minJobTimeoutMs: number;
  /**
   * How long every job is kept at least once final (the shortest of the result, failure
   * and cancel retentions): a keyed job gone sooner was lost, not expired, and a retry
   * with its key runs it again.
   */
  retentionMs: number;
}

/** The counters a submit moves (the API's metrics carry them). */
export interface SubmitMetrics {
  accepted: Counter<"tenant" | "model">;
  samples: Counter<"tenant" | "model">;
  rejections: Counter<"tenant" | "model" | "reason">;
}

export interface SubmitDeps {
  redis: RedisConn;
  queues: JobQueues;
  catalog: ModelCatalog;
  limiter: RateLimiter;
  audit: AuditSink;
  denials: DenialAggregator;
  metrics: SubmitMetrics;
  log: Logger;
  /** Completion webhooks (a job's `callback`, a tenant's callback URL); none: refused, and not notified. */
  callbacks?: CallbackPolicy;
}

interface Prepared {
  id: string;
  data: JobData;
  /** The validated input bytes, stored once beside the job. */
  inputs: Buffer;
  priority: JobRequest["priority"];
  /** What an Idempotency-Key's replay must match (the request and its input bytes). */
  readonly fingerprint: string;
}

/** A job on its way into the queue, with the Idempotency-Key entry it answers for (if any). */
interface Entering {
  p: Prepared;
  entry?: { key: string; attempt: number; reserved: boolean };
}

type Opened = { replay: Accepted } | { enter: Entering };

/**
 * Turns a validated request into a queued job. Everything a client can get wrong is
 * checked before anything touches the queue; every refusal is a CitadelError.
 *
 * The tenant's quota is reserved before the enqueue and released exactly once per job:
 * by the worker when the job settles, by a cancel that removes it, or here when the job
 * provably never reached the queue. An enqueue whose outcome is unknown (a timeout, a
 * lost reply) keeps its reservation and is settled once BullMQ's call settles.
 */
export class Submitter {
  private readonly depth = new Map<string, { n: number; at: number }>();
  private readonly catalog: ModelCatalog;
  private readonly idem: IdempotencyStore;
  private readonly quota: TenantQuota;
  /** Enqueues of unknown outcome still being settled (drained on shutdown). */
  private readonly settling = new Set<Promise<void>>();

  constructor(
    private readonly d: SubmitDeps,
    private readonly s: SubmitSettings,
  ) {
    this.catalog = d.catalog;
    this.idem = new IdempotencyStore(d.redis, s.prefix, s.idempotencyTtlMs);
    this.quota = new TenantQuota(d.redis, s.prefix, s.maxTenantQueuedBytes, s.queueTtlMs + s.idempotencyTtlMs);
  }

  /** Validates one request against its model's verified manifest (no Redis writes). */
  async prepare(req: SubmitRequest, ctx: SubmitContext): Promise<Prepared> {
    if (!this.catalog.routingOf(req.model))
      throw new CitadelError("MODEL_NOT_FOUND", `model '${req.model}' is not published`);
    if (!allowsModel(ctx.tenant, req.model))
      throw new CitadelError("FORBIDDEN", `tenant may not use model '${req.model}'`);
    if (req.priority === "high" && !ctx.tenant.allowHighPriority)
      throw new CitadelError("FORBIDDEN", 'tenant may not use priority "high" (a right granted per tenant)');
    if (req.batchRef && req.callback !== undefined)
      throw new CitadelError("VALIDATION_FAILED", "a batch's line takes no callback (name one for the batch)");
    // A batch's jobs are not notified one by one: the batch is, once it is over.
    const notify = req.batchRef ? undefined : await notifyFor(ctx.tenant, req.callback, this.d.callbacks);
    const version = this.catalog.resolveVersion(req.model, req.version);
    const manifest = await this.catalog.manifest(req.model, version);
    const timeoutMs = req.timeoutMs ?? manifest.timeoutMs;
    if (timeoutMs > manifest.timeoutMs) {
      throw new CitadelError(
        "TIMEOUT_TOO_LARGE",
        `timeoutMs ${timeoutMs} exceeds this model's limit of ${manifest.timeoutMs}`,
        {
          max: manifest.timeoutMs,
        },
      );
    }
    // A floor on the job's own timeout (never above what the model allows): a job asking
    // for almost no time would only fail, and costs a runner slot while it does.
    const floor = Math.min(this.s.minJobTimeoutMs, manifest.timeoutMs);
    if (timeoutMs < floor) {
      throw new CitadelError("TIMEOUT_TOO_SMALL", `timeoutMs ${timeoutMs} is below this model's minimum of ${floor}`, {
        min: floor,
      });
    }
    const v = validateInputs(req.inputs, manifest);
    const packed = packInputs(
      v.tensors,
      manifest.inputs.map((i) => i.name),
    );
    const outputs = req.outputs ? resolveOutputs(req.outputs, manifest) : undefined;
    const now = Date.now();
    const policy = mergePolicies(manifest.outputPolicy, ctx.tenant.outputPolicy[req.model]);
    // Field order matters: the worker's take (takeJobs-9.lua) reads the tenant as the
    // first field and `batch` before any field the tenant chooses (metadata).
    const data: JobData = {
      tenant: ctx.tenant.id,
      model: req.model,
      version,
      inputs: packed.meta,
      ...(outputs ? { outputs } : {}),
      batch: v.batch,
      inputBytes: v.inputBytes,
      timeoutMs,
      acceptedAt: now,
      deadline: now + this.s.queueTtlMs,
      requestId: ctx.requestId,
      clientIp: ctx.clientIp,
      outputPolicy: policy,
      ...(req.custom_id !== undefined ? { customId: req.custom_id } : {}),
      ...(req.metadata !== undefined ? { metadata: req.metadata } : {}),
      ...(req.batchRef ? { batchRef: req.batchRef } : {}),
      ...(notify ? { notify } : {}),
    };
    let fingerprint: string | undefined;
    return {
      id: jobIdFor(req.model, randomToken()),
      data,
      inputs: packed.bytes,
      priority: req.priority,
      // Hashed on first use: only a request with an Idempotency-Key pays for hashing its bytes.
      get fingerprint() {
        fingerprint ??= createHash("sha256")
          .update(
            JSON.stringify([
              req.model,
              req.version ?? null,
              req.outputs ?? null,
              req.timeoutMs ?? null,
              req.priority,
              // Only when given: keys recorded before these fields existed keep their fingerprints.
              ...(req.custom_id !== undefined || req.metadata !== undefined
                ? [req.custom_id ?? null, req.metadata ?? null]
                : []),
              ...(req.callback !== undefined ? [{ callback: req.callback }] : []),
            ]),
          )
          .update(JSON.stringify(data.inputs))
          .update(packed.bytes)
          .digest("hex");
        return fingerprint;
      },
    };
  }

  async submitOne(req: SubmitRequest, ctx: SubmitContext): Promise<Accepted> {
    const p = await this.prepare(req, ctx);
    this.checkBurst(ctx, p.data.batch);
    const opened: Opened = ctx.idempotencyKey ? await this.open(req, ctx, p, ctx.idempotencyKey) : { enter: { p } };
    if ("replay" in opened) return opened.replay;
    const [accepted] = await this.admit(ctx, [opened.enter]);
    if (!accepted) throw new CitadelError("INTERNAL", "internal error");
    return accepted;
  }

  /**
   * Bulk submit: each item is validated on its own and answers for itself; the items
   * to enqueue share one sample-rate charge, one capacity check and one pipelined
   * enqueue per model. A bulk whose samples exceed the tenant's sample burst is refused
   * whole (it can never be admitted: the client must split it).
   */
  async submitMany(reqs: SubmitRequest[], ctx: SubmitContext): Promise<(Accepted | { error: CitadelError })[]> {
    const prepared = await Promise.all(
      reqs.map(async (r) => {
        try {
          return await this.prepare(r, ctx);
        } catch (err) {
          return { error: asCitadel(err) };
        }
      }),
    );
    const samples = prepared.reduce((a, p) => a + ("data" in p ? p.data.batch : 0), 0);
    this.checkBurst(ctx, samples);
    const opened: (Opened | { error: CitadelError })[] = await Promise.all(
      prepared.map(async (p, i) => {
        if (!("data" in p)) return p;
        const r = reqs[i];
        if (!ctx.idempotencyKey || !r) return { enter: { p } };
        try {
          return await this.open(r, ctx, p, `${ctx.idempotencyKey}#${i}`);
        } catch (err) {
          return { error: asCitadel(err) };
        }
      }),
    );
    const entering = opened.flatMap((o) => ("enter" in o ? [o.enter] : []));
    let admitted: Accepted[] = [];
    let refused: CitadelError | undefined;
    if (entering.length > 0) {
      try {
        admitted = await this.admit(ctx, entering);
      } catch (err) {
        refused = asCitadel(err);
      }
    }
    let k = 0;
    return opened.map((o) => {
      if ("error" in o) return o;
      if ("replay" in o) return o.replay;
      const a = admitted[k++];
      return refused || !a ? { error: refused ?? new CitadelError("INTERNAL", "internal error") } : a;
    });
  }

  /** One job.rejected record and its metrics: a request refused as a whole. */
  rejected(ctx: SubmitContext, model: string | undefined, err: CitadelError): void {
    this.countRejection(ctx, model, err);
    // A rate-limit refusal's evidence is the aggregated rate.limited record (a flood of them is one record).
    if (err.code === "RATE_LIMITED") return;
    this.d.audit.record("job.rejected", {
      tenant: ctx.tenant.id,
      clientIp: ctx.clientIp,
      requestId: ctx.requestId,
      model,
      errorCode: err.code,
      outcome: "rejected",
    });
  }

  /**
   * A bulk's refused items: each counted in metrics, one job.rejected record for all of
   * them (their count, codes and how many of each), so a bulk of 500 invalid items is
   * one record, not 500.
   */
  rejectedItems(ctx: SubmitContext, items: { model?: string; error: CitadelError }[]): void {
    if (items.length === 0) return;
    const byCode = new Map<string, number>();
    for (const i of items) {
      this.countRejection(ctx, i.model, i.error);
      byCode.set(i.error.code, (byCode.get(i.error.code) ?? 0) + 1);
    }
    const codes = [...byCode.keys()].sort();
    const models = [...new Set(items.map((i) => i.model).filter((m) => m !== undefined && this.isPublished(m)))];
    this.d.audit.record("job.rejected", {
      tenant: ctx.tenant.id,
      clientIp: ctx.clientIp,
      requestId: ctx.requestId,
      ...(models.length === 1 ? { model: models[0] } : {}),
      errorCode: codes.join(","),
      detail: `bulk items refused: ${codes.map((c) => `${c}×${byCode.get(c)}`).join(", ")}`,
      count: items.length,
      outcome: "rejected",
    });
  }

  /** Settles what is still in flight, for at most `ms` (shutdown). */
  async drain(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...this.settling]),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, ms);
      }),
    ]);
    clearTimeout(timer);
  }

  private isPublished(model: string): boolean {
    return this.catalog.routingOf(model) !== undefined;
  }

  private countRejection(ctx: SubmitContext, model: string | undefined, err: CitadelError): void {
    // Only published models become a label: a client's made-up names must not grow the metric without bound.
    const known = model !== undefined && this.isPublished(model);
    this.d.metrics.rejections.inc({ tenant: ctx.tenant.id, model: known ? model : "", reason: err.code });
  }

  /** A request whose samples alone exceed the tenant's sample burst can never be admitted: refused, nothing charged. */
  private checkBurst(ctx: SubmitContext, samples: number): void {
    if (samples > ctx.tenant.sampleBurst) throw this.overBurst(ctx, samples);
  }

  private overBurst(ctx: SubmitContext, samples: number): CitadelError {
    const burst = ctx.tenant.sampleBurst;
    this.d.denials.note({
      event: "rate.limited",
      clientIp: ctx.clientIp,
      tenant: ctx.tenant.id,
      detail: "samples over burst",
      requestId: ctx.requestId,
    });
    return new CitadelError(
      "RATE_LIMITED",
      `this request carries ${samples} samples, more than the tenant's sample burst of ${burst}: ` +
        `it can never be admitted whole; split it into requests of at most ${burst} samples`,
      { scope: "samples", samples, burst, retryable: false },
    );
  }

  /** The tenant's sample rate refused `samples`: a 429 whose Retry-After says when they could pass. */
  private samplesLimited(ctx: SubmitContext, retryAfterMs: number): CitadelError {
    this.d.denials.note({
      event: "rate.limited",
      clientIp: ctx.clientIp,
      tenant: ctx.tenant.id,
      detail: "samples",
      requestId: ctx.requestId,
    });
    return new CitadelError("RATE_LIMITED", "sample rate limit reached", { retryAfterMs, scope: "samples" });
  }

  /** How long a request owns a pending Idempotency-Key before a retry may take it over. */
  private leaseMs(): number {
    return this.s.enqueueTimeoutMs + 2000;
  }

  /**
   * How long after its key was claimed a job that reached the queue is surely still
   * visible (in some state, or as a cancellation tombstone). Past it, a pending key
   * whose job is not there cannot be told apart from one whose result expired.
   */
  private horizonMs(): number {
    const q = this.d.queues.settings;
    return Math.min(q.resultTtlMs, q.failedTtlMs) / 2;
  }

  private async viewOf(id: string, tenant: string): Promise<JobView | null> {
    try {
      return await this.d.queues.view(id, tenant);
    } catch (err) {
      if (err instanceof CitadelError && err.code === "JOB_NOT_FOUND") return null;
      throw err;
    }
  }

  /**
   * Opens an Idempotency-Key for a request: a new key is claimed for this job; a used
   * one answers with its job's current state (never running it again), or 409 when that
   * job no longer exists. A key whose first request is still in flight is waited for;
   * one whose job provably never reached the queue (its request crashed, or its
   * enqueue failed) is taken over, and its job (same id) enqueued by this request; so is
   * one whose job vanished from the queue before it ever ended (reopen).
   */
  private async open(req: SubmitRequest, ctx: SubmitContext, p: Prepared, idemKey: string): Promise<Opened> {
    const key = this.idem.keyFor(ctx.tenant.id, idemKey);
    const giveUp = Date.now() + this.leaseMs() + 5000;
    for (;;) {
      const prev = await this.idem.claim(
        key,
        { id: p.id, fp: p.fingerprint, model: p.data.model, version: p.data.version },
        this.leaseMs(),
      );
      if (!prev) return { enter: { p, entry: { key, attempt: 1, reserved: false } } };
      if (prev.fp !== p.fingerprint || !prev.id) {
        throw new CitadelError("IDEMPOTENCY_CONFLICT", "this Idempotency-Key was used with a different request");
      }
      const view = await this.viewOf(prev.id, ctx.tenant.id);
      if (view) {
        // In the queue (or cancelled): a pending key's job landed; the first to confirm records it.
        if (prev.state === "pending") await this.landed(ctx, [{ p: firstOf(p, prev), entry: entryOf(key, prev) }]);
        return { replay: { id: view.id, status: view.status, model: view.model, version: view.version } };
      }
      if (prev.state === "confirmed") {
        // Gone sooner than any retention removes a job: lost with a Redis master that failed
        // over before replicating it (or removed by hand). Its result was never read or is
        // lost: this request enqueues it again, under its id (at least once across a failover).
        if (Date.now() - prev.claimedAt < this.s.retentionMs) {
          const { attempt, reservationKept } = await this.idem.reopen(key, ctx.tenant.id, prev.id, this.leaseMs());
          if (attempt < 0) continue;
          const again =
            prev.version === p.data.version ? p : await this.prepare({ ...req, version: prev.version }, ctx);
          return { enter: { p: firstOf(again, prev), entry: { key, attempt, reserved: reservationKept } } };
        }
        throw new CitadelError(
          "IDEMPOTENCY_EXPIRED",
          `the job this Idempotency-Key named (${prev.id}) no longer exists: its result expired or it was removed; ` +
            "it is not run again (send the request with a new key to run it again)",
          { id: prev.id },
        );
      }
      const now = Date.now();
      if (now - prev.claimedAt > this.horizonMs()) {
        throw new CitadelError(
          "IDEMPOTENCY_EXPIRED",
          `the job this Idempotency-Key named (${prev.id}) no longer exists, and whether it ran cannot be known any ` +
            "more; it is not run again (send the request with a new key to run it)",
          { id: prev.id },
        );
      }
      if (now > giveUp) {
        throw new CitadelError(
          "IDEMPOTENCY_CONFLICT",
          "another request with this Idempotency-Key is still in progress; retry shortly",
        );
      }
      if (now < prev.leaseUntil) {
        // The first request may still be enqueueing: wait for its outcome.
        await sleep(Math.min(50, prev.leaseUntil - now));
        continue;
      }
      const attempt = await this.idem.takeOver(key, this.leaseMs());
      if (attempt <= 0) continue;
      // The job is enqueued under its first id; validated against the version the key recorded.
      const again = prev.version === p.data.version ? p : await this.prepare({ ...req, version: prev.version }, ctx);
      return { enter: { p: firstOf(again, prev), entry: { key, attempt, reserved: prev.reserved } } };
    }
  }

  /**
   * Charges samples, reserves capacity and enqueues; every job is reserved before it
   * can be in the queue. A refusal before the enqueue frees the Idempotency-Keys.
   */
  private async admit(ctx: SubmitContext, items: Entering[]): Promise<Accepted[]> {
    let entered = false;
    try {
      // Samples of a key whose earlier attempt already reserved were charged by that attempt.
      const samples = items.filter((i) => !i.entry?.reserved).reduce((a, i) => a + i.p.data.batch, 0);
      await this.reserve(ctx, items, samples);
      entered = true;
      await this.enqueue(ctx, items);
    } catch (err) {
      if (!entered) {
        await Promise.all(
          items.map(async (i) => {
            if (!i.entry) return;
            await this.idem.unclaim(i.entry.key, i.entry.attempt).catch((e: unknown) => {
              this.d.log.warn({ err: coerceError(e) }, "could not free an Idempotency-Key after a refusal");
            });
          }),
        );
      }
      throw err;
    }
    return this.landed(ctx, items);
  }

  /**
   * Backpressure: the tenant's sample rate and share of Redis (one atomic call in the
   * tenant's slot: the samples are charged only with the reservation, and a refusal of
   * either takes nothing), then room in each model's queue (counted in this process at
   * once, so concurrent requests cannot all pass one stale check), or a refusal (429 /
   * 503) holding nothing but the samples' charge.
   */
  private async reserve(ctx: SubmitContext, items: Entering[], samples: number): Promise<void> {
    const tenant = ctx.tenant;
    if (samples > tenant.sampleBurst) throw this.overBurst(ctx, samples);
    const claims = items.map(claimOf);
    let bucket: TokenBucketCharge | undefined;
    if (samples > 0) {
      const b = this.d.limiter.charge({
        scope: "samples",
        id: tenant.id,
        rate: tenant.sampleRate,
        burst: tenant.sampleBurst,
        cost: samples,
      });
      if (b.tag === this.quota.slotOf(tenant.id)) bucket = b.charge;
      else {
        // A limiter keyed elsewhere (another prefix): its own call first, as two slots need.
        const r = await this.d.limiter.take("samples", tenant.id, tenant.sampleRate, tenant.sampleBurst, samples);
        if (!r.allowed) throw this.samplesLimited(ctx, r.retryAfterMs);
      }
    }
    const refused = await this.quota.reserve(tenant, claims, bucket);
    if (refused) throw this.samplesLimited(ctx, refused.retryAfterMs);
    const perModel = new Map<string, number>();
    for (const i of items) perModel.set(i.p.data.model, (perModel.get(i.p.data.model) ?? 0) + 1);
    const undo: (() => void)[] = [];
    try {
      for (const [model, n] of perModel) {
        const entry = await this.depthOf(model);
        if (entry.n + n > this.s.maxQueueDepth) {
          throw new CitadelError("QUEUE_FULL", `queue for '${model}' is full (${entry.n} waiting); retry later`);
        }
        entry.n += n;
        undo.push(() => {
          entry.n -= n;
        });
      }
    } catch (err) {
      for (const u of undo) u();
      await this.quota.giveBack(tenant.id, claims).catch((e: unknown) => {
        this.d.log.warn({ err: coerceError(e) }, "could not give back a quota reservation after a refusal");
      });
      throw err;
    }
  }

  /** The model's queued jobs, read from Redis at most every 250 ms; reservations are added to the cached count. */
  private async depthOf(model: string): Promise<{ n: number; at: number }> {
    const cached = this.depth.get(model);
    if (cached && Date.now() - cached.at < 250) return cached;
    const started = Date.now();
    const c = await this.d.queues.queue(model).getJobCounts("waiting", "prioritized", "delayed");
    const n = (c.waiting ?? 0) + (c.prioritized ?? 0) + (c.delayed ?? 0);
    // Another request may have refreshed (and reserved) while this one read: keep its entry.
    const now = this.depth.get(model);
    if (now && now.at >= started) return now;
    const entry = { n, at: Date.now() };
    this.depth.set(model, entry);
    return entry;
  }

  /**
   * Adds the jobs, answering 503 within enqueueTimeoutMs. When BullMQ's call times out
   * or fails, the jobs may still have landed (a timeout is not a "no", a lost reply
   * is not a lost write): the reservations are kept and the outcome is settled once the
   * call itself settles (see settle).
   */
  private async enqueue(ctx: SubmitContext, items: Entering[]): Promise<void> {
    const byModel = new Map<string, Prepared[]>();
    for (const { p } of items) byModel.set(p.data.model, [...(byModel.get(p.data.model) ?? []), p]);
    const adds = (async () => {
      for (const [model, list] of byModel)
        await this.d.queues.enqueueMany(
          model,
          list.map((p) => ({ id: p.id, data: p.data, inputs: p.inputs, priority: p.priority })),
        );
    })();
    let timer: NodeJS.Timeout | undefined;
    let cause: unknown;
    try {
      const done = await Promise.race([
        adds.then(() => true),
        new Promise<false>((resolve) => {
          timer = setTimeout(() => resolve(false), this.s.enqueueTimeoutMs);
        }),
      ]);
      if (done) return;
      cause = new Error(`enqueue took longer than ${this.s.enqueueTimeoutMs} ms`);
    } catch (err) {
      cause = err;
    } finally {
      clearTimeout(timer);
    }
    this.track(this.settle(ctx, items, adds));
    throw new CitadelError(
      "QUEUE_UNAVAILABLE",
      "the job queue is unavailable; retry later (with the same Idempotency-Key a retry returns this job if it was queued)",
      undefined,
      { cause },
    );
  }

  private track(p: Promise<void>): void {
    const t: Promise<void> = p
      .catch((err: unknown) => {
        this.d.log.warn(
          { err: coerceError(err) },
          "could not settle an enqueue of unknown outcome; its quota reservation is kept",
        );
      })
      .finally(() => this.settling.delete(t));
    this.settling.add(t);
  }

  /**
   * An enqueue of unknown outcome, once BullMQ's call has settled (nothing of it can
   * reach Redis any more): jobs that are there are accepted (confirmed and recorded);
   * those that are not never will be, and their reservations are given back (with
   * their keys, so a retry starts afresh).
   */
  private async settle(ctx: SubmitContext, items: Entering[], adds: Promise<void>): Promise<void> {
    const ok = await adds.then(
      () => true,
      () => false,
    );
    if (ok) {
      await this.landed(ctx, items);
      return;
    }
    const landed: Entering[] = [];
    const never: Entering[] = [];
    for (const i of items) ((await this.d.queues.exists(i.p.id)) ? landed : never).push(i);
    await this.quota.giveBack(ctx.tenant.id, never.map(claimOf));
    if (landed.length > 0) await this.landed(ctx, landed);
  }

  /**
   * Jobs now in the queue: each key is confirmed, and whoever confirms it (or, without
   * a key, the request itself) records the acceptance once: metrics and job.accepted.
   */
  private async landed(ctx: SubmitContext, items: Entering[]): Promise<Accepted[]> {
    return Promise.all(
      items.map(async ({ p, entry }) => {
        if (!entry || (await this.idem.confirm(entry.key))) {
          this.d.metrics.accepted.inc({ tenant: ctx.tenant.id, model: p.data.model });
          this.d.metrics.samples.inc({ tenant: ctx.tenant.id, model: p.data.model }, p.data.batch);
          this.d.audit.record("job.accepted", {
            tenant: ctx.tenant.id,
            clientIp: ctx.clientIp,
            requestId: ctx.requestId,
            jobId: p.id,
            model: p.data.model,
            version: p.data.version,
            batchSize: p.data.batch,
            inputBytes: p.data.inputBytes,
            outcome: "accepted",
          });
        }
        return { id: p.id, status: "queued" as const, model: p.data.model, version: p.data.version };
      }),
    );
  }
}

/** The request as its key's first job: that job's id and version. */
function firstOf(p: Prepared, prev: IdempotencyEntry): Prepared {
  return { ...p, id: prev.id, data: { ...p.data, version: prev.version } };
}

/** What a job asks of the tenant's quota. */
function claimOf(i: Entering): QuotaClaim {
  return {
    jobId: i.p.id,
    bytes: i.p.data.inputBytes,
    ...(i.entry ? { entry: { key: i.entry.key, attempt: i.entry.attempt } } : {}),
  };
}

function entryOf(key: string, prev: IdempotencyEntry): NonNullable<Entering["entry"]> {
  return { key, attempt: prev.attempt, reserved: prev.reserved };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function asCitadel(err: unknown): CitadelError {
  if (err instanceof CitadelError) return err;
  // A job store out of reach (Redis restarting, a cluster failing over) is a 503 the
  // client retries with its Idempotency-Key, not a fault of ours.
  if (isRedisUnavailable(err))
    return new CitadelError("QUEUE_UNAVAILABLE", "the job store is unavailable; retry later", undefined, {
      cause: err,
    });
  return new CitadelError("INTERNAL", "internal error", undefined, { cause: err });
}
