import { createHash } from "node:crypto";
import { keys, type Redis } from "@citadel/queue";

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

/** Creates the entry unless one exists; returns the existing one's fields, or nil when this call created it. */
const CLAIM = `
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HMGET', KEYS[1], 'id', 'fp', 'model', 'version', 'state', 'attempt', 'reserved', 'at', 'lease')
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'fp', ARGV[2], 'model', ARGV[3], 'version', ARGV[4],
  'state', 'pending', 'attempt', 1, 'reserved', 0, 'at', ARGV[5], 'lease', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return false
`;

/**
 * A pending entry whose lease has run out (ARGV[2] = now) gets a new attempt number
 * (returned) and a new lease (ARGV[1]); 0 when it is no longer pending, -1 when
 * another request took it over first.
 */
const TAKE_OVER = `
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'lease') or 0) > tonumber(ARGV[2]) then return -1 end
redis.call('HSET', KEYS[1], 'lease', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'attempt', 1)
`;

/** pending → confirmed; 1 for the one caller that made the change. */
const CONFIRM = `
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'confirmed')
return 1
`;

/** Frees a key whose request was refused before its enqueue: only the current attempt, and only with nothing reserved. */
const UNCLAIM = `
local e = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'reserved')
if e[1] ~= 'pending' or e[2] ~= ARGV[1] or e[3] ~= '0' then return 0 end
return redis.call('DEL', KEYS[1])
`;

type Script = (key: string, ...args: (string | number)[]) => Promise<unknown>;
type Scripts = {
  citadelIdemClaim: Script;
  citadelIdemTakeOver: Script;
  citadelIdemConfirm: Script;
  citadelIdemUnclaim: Script;
};

/** The Idempotency-Key entries of every tenant; each transition is one atomic script. */
export class IdempotencyStore {
  private readonly r: Redis & Scripts;

  constructor(
    redis: Redis,
    private readonly prefix: string,
    private readonly ttlMs: number,
  ) {
    const defs: [keyof Scripts, string][] = [
      ["citadelIdemClaim", CLAIM],
      ["citadelIdemTakeOver", TAKE_OVER],
      ["citadelIdemConfirm", CONFIRM],
      ["citadelIdemUnclaim", UNCLAIM],
    ];
    for (const [name, lua] of defs) if (!(name in redis)) redis.defineCommand(name, { numberOfKeys: 1, lua });
    this.r = redis as Redis & Scripts;
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
    const raw = (await this.r.citadelIdemClaim(
      key,
      first.id,
      first.fp,
      first.model,
      first.version,
      now,
      this.ttlMs,
      now + leaseMs,
    )) as (string | null)[] | null;
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
    return Number(await this.r.citadelIdemTakeOver(key, now + leaseMs, now));
  }

  /** Marks the job as in the queue; true for the one caller that did (it records the acceptance). */
  async confirm(key: string): Promise<boolean> {
    return Number(await this.r.citadelIdemConfirm(key)) === 1;
  }

  /** Frees the key after a refusal before the enqueue, so the client may retry with it. */
  async unclaim(key: string, attempt: number): Promise<void> {
    await this.r.citadelIdemUnclaim(key, attempt);
  }
}
