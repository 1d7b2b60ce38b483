import { createHash } from "node:crypto";
import { type CitadelScripts, keys, type RedisConn, scripts } from "@citadel/queue";

/**
 * What an Idempotency-Key names, kept in a Redis hash for the key's lifetime. The job
 * id is fixed when the key is claimed, before anything is enqueued, so every attempt
 * for the key enqueues the same id (BullMQ adds an existing id at most once).
 */
export interface IdempotencyEntry {
  id: string;
  /** Fingerprint of the request; a different request under the same key is a conflict. */
  fp: string;
  model: string;
  version: string;
  /** "pending" until the job is known to be in the queue; "confirmed" from then on. */
  state: "pending" | "confirmed";
  /** Bumped by each request that takes over a pending entry; only the current attempt may reserve or give back. */
  attempt: number;
  /** Whether the tenant's quota holds this job's reservation (taken at most once per key, see quota.ts). */
  reserved: boolean;
  /** When the key was first claimed (epoch ms). */
  claimedAt: number;
  /** Until when the current attempt owns a pending entry (epoch ms): later requests wait for it, then may take over. */
  leaseUntil: number;
}

/** The Idempotency-Key entries of every tenant; each transition is one atomic script (idempotency*.lua in @citadel/queue). */
export class IdempotencyStore {
  private readonly scripts: CitadelScripts;

  constructor(
    redis: RedisConn,
    private readonly prefix: string,
    private readonly ttlMs: number,
  ) {
    this.scripts = scripts(redis);
  }

  /** The Redis key for a tenant's Idempotency-Key (hashed: keys are client-chosen strings). */
  keyFor(tenant: string, idempotencyKey: string): string {
    return keys.idempotency(this.prefix, tenant, createHash("sha256").update(idempotencyKey).digest("hex"));
  }

  /**
   * Claims the key for a new job, owned for `leaseMs`; returns the entry that already
   * holds it, or null when this call claimed it.
   */
  async claim(
    key: string,
    first: Pick<IdempotencyEntry, "id" | "fp" | "model" | "version">,
    leaseMs: number,
  ): Promise<IdempotencyEntry | null> {
    const now = Date.now();
    const raw = await this.scripts.idempotencyClaim(key, first, now, this.ttlMs, now + leaseMs);
    if (!raw) return null;
    const [id, fp, model, version, state, attempt, reserved, at, lease] = raw;
    return {
      id: id ?? "",
      fp: fp ?? "",
      model: model ?? "",
      version: version ?? "",
      state: state === "confirmed" ? "confirmed" : "pending",
      attempt: Number(attempt ?? 0),
      reserved: (reserved ?? "0") !== "0",
      claimedAt: Number(at ?? 0),
      leaseUntil: Number(lease ?? 0),
    };
  }

  /**
   * Makes this request the owner of a pending entry whose lease ran out: the new
   * attempt number; 0 when it is not pending any more, -1 when another request took it first.
   */
  async takeOver(key: string, leaseMs: number): Promise<number> {
    const now = Date.now();
    return this.scripts.idempotencyTakeOver(key, now + leaseMs, now);
  }

  /**
   * Makes this request the owner of a confirmed entry whose job vanished (lost with a
   * Redis master that failed over, or removed by hand), to enqueue it again under its id:
   * the new attempt (-1 when the entry changed: another request reopened it, read it
   * again) and whether the job's reservation is kept (its marker still held: it never
   * ended) or must be taken again.
   */
  reopen(
    key: string,
    tenant: string,
    jobId: string,
    leaseMs: number,
  ): Promise<{ attempt: number; reservationKept: boolean }> {
    return this.scripts.idempotencyReopen(key, keys.quotaHeld(this.prefix, tenant, jobId), jobId, Date.now() + leaseMs);
  }

  /** Marks the job as in the queue; true for the one caller that did (it records the acceptance). */
  async confirm(key: string): Promise<boolean> {
    return (await this.scripts.idempotencyConfirm(key)) === 1;
  }

  /** Frees the key after a refusal before the enqueue, so the client may retry with it. */
  async unclaim(key: string, attempt: number): Promise<void> {
    await this.scripts.idempotencyUnclaim(key, attempt);
  }
}
