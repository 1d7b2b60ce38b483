import { CitadelError } from "@citadel/contracts";
import {
  type CitadelScripts,
  keys,
  type QuotaJob,
  type RedisConn,
  scripts,
  type TokenBucketCharge,
  tenantPrefix,
} from "@citadel/queue";
import type { Tenant } from "@citadel/tenants";

/** A job asking for room: its id, input bytes and, when it has one, its Idempotency-Key entry and the caller's attempt. */
export interface QuotaClaim {
  jobId: string;
  bytes: number;
  entry?: { key: string; attempt: number };
}

/**
 * The per-tenant queued-jobs and queued-bytes counters. The API reserves when it
 * accepts; a job's reservation is released exactly once: by the worker when the job
 * settles, by the API when it cancels a queued job, or here when the job provably
 * never reached the queue.
 */
export class TenantQuota {
  private readonly scripts: CitadelScripts;

  constructor(
    redis: RedisConn,
    private readonly prefix: string,
    private readonly maxQueuedBytes: number,
    /** How long a reservation marker outlives its job at most (a marker that expires only leaves the counters high). */
    private readonly heldTtlMs: number,
  ) {
    this.scripts = scripts(redis);
  }

  /**
   * Reserves room for every claim not already reserved under its key, or refuses (429 /
   * 503 / 409) taking nothing. `samples`, a bucket in the tenant's slot, is charged in the
   * same call, only when the room is taken (and checked first): when it refuses, nothing
   * is taken and the answer is how long until it could pass; null when taken.
   */
  async reserve(
    tenant: Tenant,
    claims: QuotaClaim[],
    samples?: TokenBucketCharge,
  ): Promise<{ retryAfterMs: number } | null> {
    const {
      verdict,
      jobsBefore: had,
      retryAfterMs,
    } = await this.scripts.quotaReserve({
      ...this.counters(tenant.id),
      maxJobs: tenant.maxQueuedJobs,
      maxBytes: this.maxQueuedBytes,
      markerTtlMs: this.heldTtlMs,
      jobs: this.jobs(tenant.id, claims),
      ...(samples ? { bucket: { charge: samples, nowMs: Date.now() } } : {}),
    });
    switch (verdict) {
      case 0:
        return null;
      case 4:
        return { retryAfterMs };
      case 1:
        throw new CitadelError("QUOTA_EXCEEDED", `tenant has ${had} queued jobs; the limit is ${tenant.maxQueuedJobs}`);
      case 2:
        throw new CitadelError("QUEUE_FULL", "tenant's queued input bytes are at their bound; retry later");
      default:
        throw new CitadelError(
          "IDEMPOTENCY_CONFLICT",
          "another request with this Idempotency-Key took it over; retry to get its job",
        );
    }
  }

  /** The slot tag of the tenant's quota keys: a bucket with this tag can be charged by `reserve`. */
  slotOf(tenant: string): string {
    return tenantPrefix(this.prefix, tenant);
  }

  /** Gives back what `reserve` took for jobs that never reached the queue (quotaGiveBack.lua). Returns the jobs given back. */
  async giveBack(tenant: string, claims: QuotaClaim[]): Promise<number> {
    if (claims.length === 0) return 0;
    return this.scripts.quotaGiveBack({ ...this.counters(tenant), jobs: this.jobs(tenant, claims) });
  }

  private counters(tenant: string): { jobsKey: string; bytesKey: string } {
    return {
      jobsKey: keys.tenantQueuedJobs(this.prefix, tenant),
      bytesKey: keys.tenantQueuedBytes(this.prefix, tenant),
    };
  }

  private jobs(tenant: string, claims: QuotaClaim[]): QuotaJob[] {
    return claims.map((c) => ({
      marker: keys.quotaHeld(this.prefix, tenant, c.jobId),
      bytes: c.bytes,
      entry: c.entry,
    }));
  }
}
