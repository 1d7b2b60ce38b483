import { createHash, randomBytes } from "node:crypto";
import type { AuditSink } from "@citadel/audit";
import { CitadelError, type JobData, type JobRequest } from "@citadel/contracts";
import { type JobQueues, jobIdFor, keys, type Redis } from "@citadel/queue";
import { allowsModel, type Tenant } from "@citadel/tenants";
import { mergePolicies, resolveOutputs, validateInputs } from "@citadel/tensors";
import type { ModelCatalog } from "./catalog.js";
import type { RateLimiter } from "./limits.js";
import type { ApiMetrics } from "./metrics.js";

export interface SubmitContext {
  tenant: Tenant;
  requestId: string;
  clientIp: string;
  idempotencyKey?: string;
}

export interface Accepted {
  id: string;
  status: "queued";
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
}

interface Prepared {
  id: string;
  data: JobData;
  priority: JobRequest["priority"];
  fingerprint: string;
}

/**
 * Turns a validated request into a queued job. Everything a client can get wrong is
 * checked before anything touches the queue; every refusal is a CitadelError.
 */
export class Submitter {
  private readonly depth = new Map<string, { n: number; at: number }>();

  constructor(
    private readonly redis: Redis,
    private readonly queues: JobQueues,
    private readonly catalog: ModelCatalog,
    private readonly limiter: RateLimiter,
    private readonly audit: AuditSink,
    private readonly metrics: ApiMetrics,
    private readonly s: SubmitSettings,
  ) {}

  /** Validates one request against its model's verified manifest (no Redis writes). */
  async prepare(req: JobRequest, ctx: SubmitContext): Promise<Prepared> {
    if (!this.catalog.routingOf(req.model))
      throw new CitadelError("MODEL_NOT_FOUND", `model '${req.model}' is not published`);
    if (!allowsModel(ctx.tenant, req.model))
      throw new CitadelError("FORBIDDEN", `tenant may not use model '${req.model}'`);
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
    const v = validateInputs(req.inputs, manifest);
    const outputs = req.outputs ? resolveOutputs(req.outputs, manifest) : undefined;
    const now = Date.now();
    const policy = mergePolicies(manifest.outputPolicy, ctx.tenant.outputPolicy[req.model]);
    const data: JobData = {
      tenant: ctx.tenant.id,
      model: req.model,
      version,
      inputs: v.encoded,
      ...(outputs ? { outputs } : {}),
      batch: v.batch,
      inputBytes: v.inputBytes,
      timeoutMs,
      acceptedAt: now,
      deadline: now + this.s.queueTtlMs,
      requestId: ctx.requestId,
      clientIp: ctx.clientIp,
      outputPolicy: policy,
    };
    const fingerprint = createHash("sha256")
      .update(
        JSON.stringify([req.model, req.version ?? null, req.outputs ?? null, req.timeoutMs ?? null, req.priority]),
      )
      .update(JSON.stringify(data.inputs))
      .digest("hex");
    return {
      id: jobIdFor(req.model, randomBytes(18).toString("base64url")),
      data,
      priority: req.priority,
      fingerprint,
    };
  }

  /**
   * Backpressure: reserves room for `jobs` in the model's queue and in the tenant's
   * share of Redis, or refuses (503 / 429). Reservations are taken before anything is
   * enqueued so that concurrent requests cannot all pass one stale check; the
   * returned function gives them back when the enqueue does not happen.
   */
  private async reserve(tenant: Tenant, model: string, jobs: number, bytes: number): Promise<() => Promise<void>> {
    const jobsKey = keys.tenantQueuedJobs(this.s.prefix, tenant.id);
    const bytesKey = keys.tenantQueuedBytes(this.s.prefix, tenant.id);
    const [verdict, had] = (await this.redis.eval(
      RESERVE_QUOTA,
      2,
      jobsKey,
      bytesKey,
      jobs,
      bytes,
      tenant.maxQueuedJobs,
      this.s.maxTenantQueuedBytes,
    )) as [number, number];
    if (verdict === 1) {
      throw new CitadelError("QUOTA_EXCEEDED", `tenant has ${had} queued jobs; the limit is ${tenant.maxQueuedJobs}`);
    }
    if (verdict === 2) {
      throw new CitadelError("QUEUE_FULL", "tenant's queued input bytes are at their bound; retry later");
    }
    const releaseTenant = async () => {
      await this.redis.eval(RELEASE_RESERVATION, 2, jobsKey, bytesKey, jobs, bytes).catch(() => 0);
    };
    let entry: { n: number; at: number };
    try {
      entry = await this.depthOf(model);
    } catch (err) {
      await releaseTenant();
      throw err;
    }
    if (entry.n + jobs > this.s.maxQueueDepth) {
      await releaseTenant();
      throw new CitadelError("QUEUE_FULL", `queue for '${model}' is full (${entry.n} waiting); retry later`);
    }
    // Counted at once (no await in between), so this replica's concurrent requests see it.
    entry.n += jobs;
    return async () => {
      entry.n -= jobs;
      await releaseTenant();
    };
  }

  /** The model's queued jobs, read from Redis at most every 250 ms; reservations are added to the cached count. */
  private async depthOf(model: string): Promise<{ n: number; at: number }> {
    const cached = this.depth.get(model);
    if (cached && Date.now() - cached.at < 250) return cached;
    const started = Date.now();
    const c = await this.queues.queue(model).getJobCounts("waiting", "prioritized", "delayed");
    const n = (c.waiting ?? 0) + (c.prioritized ?? 0) + (c.delayed ?? 0);
    // Another request may have refreshed (and reserved) while this one read: keep its entry.
    const now = this.depth.get(model);
    if (now && now.at >= started) return now;
    const entry = { n, at: Date.now() };
    this.depth.set(model, entry);
    return entry;
  }

  private async takeSamples(tenant: Tenant, model: string, samples: number): Promise<void> {
    const r = await this.limiter.take("samples", tenant.id, tenant.sampleRate, tenant.sampleBurst, samples);
    if (!r.allowed) {
      this.audit.record("rate.limited", { tenant: tenant.id, model, detail: "samples" });
      throw new CitadelError("RATE_LIMITED", "sample rate limit reached", {
        retryAfterMs: r.retryAfterMs,
        scope: "samples",
      });
    }
  }

  /**
   * Claims an idempotency key. Returns the job it already names, or null when this
   * request now owns it. The job id is fixed before enqueueing, so a crash between
   * claim and enqueue cannot produce a second job: a retry re-adds the same id.
   */
  private async claim(ctx: SubmitContext, p: Prepared, key: string): Promise<Accepted | null> {
    const k = keys.idempotency(this.s.prefix, ctx.tenant.id, createHash("sha256").update(key).digest("hex"));
    const value = JSON.stringify({ id: p.id, fp: p.fingerprint, model: p.data.model, version: p.data.version });
    const set = await this.redis.set(k, value, "PX", this.s.idempotencyTtlMs, "NX");
    if (set === "OK") return null;
    const prev = JSON.parse((await this.redis.get(k)) ?? "{}") as {
      id?: string;
      fp?: string;
      model?: string;
      version?: string;
    };
    if (prev.fp !== p.fingerprint || !prev.id) {
      throw new CitadelError("IDEMPOTENCY_CONFLICT", "this Idempotency-Key was used with a different request");
    }
    // Re-add under the same id: a no-op if it exists, and completes a crashed first attempt.
    const first = { ...p, id: prev.id, data: { ...p.data, version: prev.version ?? p.data.version } };
    await this.enqueue([first]);
    return {
      id: prev.id,
      status: "queued",
      model: prev.model ?? p.data.model,
      version: prev.version ?? p.data.version,
    };
  }

  private async enqueue(items: Prepared[]): Promise<void> {
    const byModel = new Map<string, Prepared[]>();
    for (const p of items) byModel.set(p.data.model, [...(byModel.get(p.data.model) ?? []), p]);
    let timer: NodeJS.Timeout | undefined;
    try {
      // BullMQ waits for its connection to be ready; while Redis is down that would hold
      // the request open. Answer 503 within a bound instead (a retry with the same
      // Idempotency-Key returns the same job if this one did get through).
      const adds = (async () => {
        for (const [model, list] of byModel)
          await this.queues.enqueueMany(
            model,
            list.map((p) => ({ id: p.id, data: p.data, priority: p.priority })),
          );
      })();
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("enqueue timed out")), this.s.enqueueTimeoutMs);
      });
      adds.catch(() => undefined); // settled either way; the race below reports it
      await Promise.race([adds, timeout]);
    } catch (err) {
      throw new CitadelError("QUEUE_UNAVAILABLE", "the job queue is unavailable; retry later", undefined, {
        cause: err,
      });
    } finally {
      clearTimeout(timer);
    }
  }

  private accepted(ctx: SubmitContext, p: Prepared): Accepted {
    this.metrics.accepted.inc({ tenant: ctx.tenant.id, model: p.data.model });
    this.audit.record("job.accepted", {
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
    return { id: p.id, status: "queued", model: p.data.model, version: p.data.version };
  }

  rejected(ctx: SubmitContext, model: string | undefined, err: CitadelError): void {
    // Only published models become a label: a client's made-up names must not grow the metric without bound.
    const known = model !== undefined && this.catalog.routingOf(model) !== undefined;
    this.metrics.rejections.inc({ tenant: ctx.tenant.id, model: known ? model : "", reason: err.code });
    this.audit.record("job.rejected", {
      tenant: ctx.tenant.id,
      clientIp: ctx.clientIp,
      requestId: ctx.requestId,
      model,
      errorCode: err.code,
      outcome: "rejected",
    });
  }

  async submitOne(req: JobRequest, ctx: SubmitContext): Promise<Accepted> {
    const p = await this.prepare(req, ctx);
    if (ctx.idempotencyKey) {
      const existing = await this.claim(ctx, p, ctx.idempotencyKey);
      if (existing) return existing;
    }
    let enqueueStarted = false;
    try {
      await this.takeSamples(ctx.tenant, req.model, p.data.batch);
      const release = await this.reserve(ctx.tenant, req.model, 1, p.data.inputBytes);
      enqueueStarted = true;
      await this.enqueue([p]).catch(async (err: unknown) => {
        await release();
        throw err;
      });
    } catch (err) {
      // A refusal before the enqueue frees the key for a retry. After the enqueue began
      // it may still land (a timeout is not a "no"): the key keeps naming this job id,
      // so the client's retry re-adds that same id instead of creating a second job.
      if (ctx.idempotencyKey && !enqueueStarted) await this.release(ctx, ctx.idempotencyKey);
      throw err;
    }
    return this.accepted(ctx, p);
  }

  private async release(ctx: SubmitContext, key: string): Promise<void> {
    await this.redis
      .del(keys.idempotency(this.s.prefix, ctx.tenant.id, createHash("sha256").update(key).digest("hex")))
      .catch(() => 0);
  }

  /**
   * Bulk submit: each item is validated on its own and answers for itself; the valid
   * ones share one sample-rate charge, one capacity check and one pipelined enqueue
   * per model.
   */
  async submitMany(reqs: JobRequest[], ctx: SubmitContext): Promise<(Accepted | { error: CitadelError })[]> {
    const results: (Accepted | { error: CitadelError } | Prepared)[] = await Promise.all(
      reqs.map(async (r, i) => {
        try {
          const p = await this.prepare(r, ctx);
          if (ctx.idempotencyKey) {
            const existing = await this.claim(ctx, p, `${ctx.idempotencyKey}#${i}`);
            if (existing) return existing;
          }
          return p;
        } catch (err) {
          return { error: asCitadel(err) };
        }
      }),
    );
    const fresh = results.filter((r): r is Prepared => "data" in r);
    if (fresh.length > 0) {
      let enqueueStarted = false;
      try {
        const samples = fresh.reduce((a, p) => a + p.data.batch, 0);
        await this.takeSamples(ctx.tenant, fresh[0]?.data.model ?? "", samples);
        const byModel = new Map<string, Prepared[]>();
        for (const p of fresh) byModel.set(p.data.model, [...(byModel.get(p.data.model) ?? []), p]);
        const releases: (() => Promise<void>)[] = [];
        const releaseAll = async () => {
          for (const r of releases) await r();
        };
        try {
          for (const [model, list] of byModel) {
            releases.push(
              await this.reserve(
                ctx.tenant,
                model,
                list.length,
                list.reduce((a, p) => a + p.data.inputBytes, 0),
              ),
            );
          }
          enqueueStarted = true;
          await this.enqueue(fresh);
        } catch (err) {
          await releaseAll();
          throw err;
        }
      } catch (err) {
        const e = asCitadel(err);
        if (ctx.idempotencyKey && !enqueueStarted) {
          await Promise.all(
            results.map((r, i) => ("data" in r ? this.release(ctx, `${ctx.idempotencyKey}#${i}`) : null)),
          );
        }
        return results.map((r) => ("data" in r ? { error: e } : r));
      }
    }
    return results.map((r, i) => {
      if (!("data" in r)) {
        if ("error" in r) this.rejected(ctx, reqs[i]?.model, r.error);
        return r;
      }
      return this.accepted(ctx, r);
    });
  }
}

/**
 * Takes a tenant's share for new jobs atomically: refused (and nothing kept) when the
 * jobs (verdict 1) or the bytes (verdict 2) would pass their bound. Returns {verdict, jobs before}.
 */
const RESERVE_QUOTA = `
local j = redis.call('INCRBY', KEYS[1], ARGV[1])
local b = redis.call('INCRBY', KEYS[2], ARGV[2])
local verdict = 0
if j > tonumber(ARGV[3]) then verdict = 1 elseif b > tonumber(ARGV[4]) then verdict = 2 end
if verdict > 0 then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  redis.call('DECRBY', KEYS[2], ARGV[2])
end
return {verdict, j - tonumber(ARGV[1])}
`;

/** Gives back a reservation whose jobs were never enqueued (never below zero). */
const RELEASE_RESERVATION = `
local j = redis.call('DECRBY', KEYS[1], ARGV[1])
if j < 0 then redis.call('SET', KEYS[1], 0) end
local b = redis.call('DECRBY', KEYS[2], ARGV[2])
if b < 0 then redis.call('SET', KEYS[2], 0) end
return j
`;

export function asCitadel(err: unknown): CitadelError {
  if (err instanceof CitadelError) return err;
  return new CitadelError("INTERNAL", "internal error", undefined, { cause: err });
}
