import { CitadelError } from "@citadel/contracts";
import { keys, type Redis } from "@citadel/queue";
import type { Tenant } from "@citadel/tenants";

/**
 * Takes a tenant's share for new jobs atomically. KEYS: the two counters, then per job
 * its reservation marker, then the Idempotency-Key entries of the keyed jobs. Each
 * entry must still be owned by the caller's attempt (else verdict 3: another request
 * took the key over, and this one must not enqueue). A job whose entry already holds a
 * reservation (from an earlier attempt) is not counted again; every job counted now
 * gets its marker (its bytes, so release gives back exactly this) and its entry records
 * the attempt that reserved it, so a key's job is reserved once however many requests
 * try to enqueue it. Refused (nothing kept) when the jobs (verdict 1) or bytes
 * (verdict 2) would pass their bound.
 * ARGV: max jobs, max bytes, job count n, marker TTL ms, then per job: bytes, entry
 * index (0: no key), attempt.
 * Returns {verdict, jobs before, jobs reserved now}.
 */
const RESERVE = `
local n = tonumber(ARGV[3])
local jobs, bytes = 0, 0
local counted = {}
for i = 1, n do
  local a = 5 + (i - 1) * 3
  local entry = tonumber(ARGV[a + 1])
  local count = true
  if entry > 0 then
    local e = redis.call('HMGET', KEYS[2 + n + entry], 'attempt', 'reserved')
    if e[1] ~= ARGV[a + 2] then return {3, 0, 0} end
    count = e[2] == '0'
  end
  if count then
    jobs = jobs + 1
    bytes = bytes + tonumber(ARGV[a])
    counted[#counted + 1] = i
  end
end
if jobs == 0 then return {0, tonumber(redis.call('GET', KEYS[1]) or 0), 0} end
local j = redis.call('INCRBY', KEYS[1], jobs)
local b = redis.call('INCRBY', KEYS[2], bytes)
local verdict = 0
if j > tonumber(ARGV[1]) then verdict = 1 elseif b > tonumber(ARGV[2]) then verdict = 2 end
if verdict > 0 then
  redis.call('DECRBY', KEYS[1], jobs)
  redis.call('DECRBY', KEYS[2], bytes)
  return {verdict, j - jobs, 0}
end
for _, i in ipairs(counted) do
  local a = 5 + (i - 1) * 3
  redis.call('SET', KEYS[2 + i], ARGV[a], 'PX', ARGV[4])
  local entry = tonumber(ARGV[a + 1])
  if entry > 0 then redis.call('HSET', KEYS[2 + n + entry], 'reserved', ARGV[a + 2]) end
end
return {0, j - jobs, jobs}
`;

/**
 * Gives back reservations of jobs that provably never reached the queue. KEYS: the
 * two counters, then per job its reservation marker, then the keyed jobs' entries.
 * A job without a key is the caller's own; a keyed job is given back only when its
 * entry is pending under the caller's attempt and that attempt made the reservation
 * (an adopted one may belong to an earlier attempt whose enqueue is still on its
 * way); those entries go with their reservations, so their keys are free again. Each
 * share is given back only by the call that deletes its marker. Never below zero.
 * ARGV: job count n, then per job: entry index (0: no key), attempt. Returns the jobs given back.
 */
const GIVE_BACK = `
local n = tonumber(ARGV[1])
local jobs, bytes = 0, 0
for i = 1, n do
  local a = 2 + (i - 1) * 2
  local entry = tonumber(ARGV[a])
  local mine = true
  if entry > 0 then
    local e = redis.call('HMGET', KEYS[2 + n + entry], 'state', 'attempt', 'reserved')
    mine = e[1] == 'pending' and e[2] == ARGV[a + 1] and e[3] == ARGV[a + 1]
    if mine then redis.call('DEL', KEYS[2 + n + entry]) end
  end
  local held = mine and redis.call('GET', KEYS[2 + i])
  if held then
    redis.call('DEL', KEYS[2 + i])
    jobs = jobs + 1
    bytes = bytes + tonumber(held)
  end
end
if jobs == 0 then return 0 end
local j = redis.call('DECRBY', KEYS[1], jobs)
if j < 0 then redis.call('SET', KEYS[1], 0) end
local b = redis.call('DECRBY', KEYS[2], bytes)
if b < 0 then redis.call('SET', KEYS[2], 0) end
return jobs
`;

/** A job asking for room: its id, input bytes and, when it has one, its Idempotency-Key entry and the caller's attempt. */
export interface QuotaClaim {
  jobId: string;
  bytes: number;
  entry?: { key: string; attempt: number };
}

type Scripts = {
  citadelQuotaReserve: (n: number, ...args: (string | number)[]) => Promise<[number, number, number]>;
  citadelQuotaGiveBack: (n: number, ...args: (string | number)[]) => Promise<number>;
};

/**
 * The per-tenant queued-jobs and queued-bytes counters. The API reserves when it
 * accepts; a job's reservation is released exactly once: by the worker when the job
 * settles, by the API when it cancels a queued job, or here when the job provably
 * never reached the queue.
 */
export class TenantQuota {
  private readonly r: Redis & Scripts;

  constructor(
    redis: Redis,
    private readonly prefix: string,
    private readonly maxQueuedBytes: number,
    /** How long a reservation marker outlives its job at most (a marker that expires only leaves the counters high). */
    private readonly heldTtlMs: number,
  ) {
    if (!("citadelQuotaReserve" in redis)) redis.defineCommand("citadelQuotaReserve", { lua: RESERVE });
    if (!("citadelQuotaGiveBack" in redis)) redis.defineCommand("citadelQuotaGiveBack", { lua: GIVE_BACK });
    this.r = redis as Redis & Scripts;
  }

  private counters(tenant: string): [string, string] {
    return [keys.tenantQueuedJobs(this.prefix, tenant), keys.tenantQueuedBytes(this.prefix, tenant)];
  }

  /** Reserves room for every claim not already reserved under its key, or refuses (429 / 503 / 409) taking nothing. */
  async reserve(tenant: Tenant, claims: QuotaClaim[]): Promise<void> {
    const { keysOf, argsOf } = this.layout(tenant.id, claims, (c, entry) => [c.bytes, entry, c.entry?.attempt ?? 0]);
    const [verdict, had] = await this.r.citadelQuotaReserve(
      keysOf.length,
      ...keysOf,
      tenant.maxQueuedJobs,
      this.maxQueuedBytes,
      claims.length,
      this.heldTtlMs,
      ...argsOf,
    );
    switch (verdict) {
      case 0:
        return;
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

  /** Gives back what `reserve` took for jobs that never reached the queue; see GIVE_BACK. Returns the jobs given back. */
  async giveBack(tenant: string, claims: QuotaClaim[]): Promise<number> {
    if (claims.length === 0) return 0;
    const { keysOf, argsOf } = this.layout(tenant, claims, (c, entry) => [entry, c.entry?.attempt ?? 0]);
    return this.r.citadelQuotaGiveBack(keysOf.length, ...keysOf, claims.length, ...argsOf);
  }

  /** KEYS (counters, a marker per job, the keyed jobs' entries) and per-job ARGV, as both scripts read them. */
  private layout(
    tenant: string,
    claims: QuotaClaim[],
    perJob: (c: QuotaClaim, entryIndex: number) => (string | number)[],
  ): { keysOf: string[]; argsOf: (string | number)[] } {
    const entries: string[] = [];
    const argsOf = claims.flatMap((c) => {
      if (c.entry) entries.push(c.entry.key);
      return perJob(c, c.entry ? entries.length : 0);
    });
    const markers = claims.map((c) => keys.quotaHeld(this.prefix, tenant, c.jobId));
    return { keysOf: [...this.counters(tenant), ...markers, ...entries], argsOf };
  }
}
