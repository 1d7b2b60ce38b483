import { CitadelError } from "@citadel/contracts";
import { keys, type Redis } from "@citadel/queue";
import type { Tenant } from "@citadel/tenants";

/**
 * Takes a tenant's share for new jobs atomically. Each Idempotency-Key entry
 * (KEYS[3..]) must still be owned by the caller's attempt (else verdict 3: another
 * request took the key over, and this one must not enqueue). A job whose entry already
 * holds a reservation (from an earlier attempt) is not counted again; the entries
 * counted now record the attempt that reserved them, so a key's job is reserved once
 * however many requests try to enqueue it. Refused (nothing kept) when the jobs
 * (verdict 1) or bytes (verdict 2) would pass their bound.
 * ARGV: max jobs, max bytes, jobs without a key, their bytes, then per entry: bytes, attempt.
 * Returns {verdict, jobs before, jobs reserved now}.
 */
const RESERVE = `
local jobs = tonumber(ARGV[3])
local bytes = tonumber(ARGV[4])
local mark = {}
for i = 3, #KEYS do
  local a = 5 + (i - 3) * 2
  local e = redis.call('HMGET', KEYS[i], 'attempt', 'reserved')
  if e[1] ~= ARGV[a + 1] then return {3, 0, 0} end
  if e[2] == '0' then
    jobs = jobs + 1
    bytes = bytes + tonumber(ARGV[a])
    mark[#mark + 1] = {KEYS[i], ARGV[a + 1]}
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
for _, m in ipairs(mark) do redis.call('HSET', m[1], 'reserved', m[2]) end
return {0, j - jobs, jobs}
`;

/**
 * Gives back reservations of jobs that provably never reached the queue: ARGV[1] jobs
 * and ARGV[2] bytes without a key (the caller's own), and each Idempotency-Key entry
 * (KEYS[3..]; ARGV per entry: bytes, attempt) that is pending under the caller's
 * attempt and whose reservation that attempt made (an adopted one may belong to an
 * earlier attempt whose enqueue is still on its way). Those entries go with their
 * reservations, so their keys are free again. Never below zero. Returns the jobs given back.
 */
const GIVE_BACK = `
local jobs = tonumber(ARGV[1])
local bytes = tonumber(ARGV[2])
for i = 3, #KEYS do
  local a = 3 + (i - 3) * 2
  local e = redis.call('HMGET', KEYS[i], 'state', 'attempt', 'reserved')
  if e[1] == 'pending' and e[2] == ARGV[a + 1] and e[3] == ARGV[a + 1] then
    redis.call('DEL', KEYS[i])
    jobs = jobs + 1
    bytes = bytes + tonumber(ARGV[a])
  end
end
if jobs == 0 then return 0 end
local j = redis.call('DECRBY', KEYS[1], jobs)
if j < 0 then redis.call('SET', KEYS[1], 0) end
local b = redis.call('DECRBY', KEYS[2], bytes)
if b < 0 then redis.call('SET', KEYS[2], 0) end
return jobs
`;

/** A job asking for room: its input bytes and, when it has one, its Idempotency-Key entry and the caller's attempt. */
export interface QuotaClaim {
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
    const { keyed, plain } = split(claims);
    const [verdict, had] = await this.r.citadelQuotaReserve(
      2 + keyed.length,
      ...this.counters(tenant.id),
      ...keyed.map((c) => c.key),
      tenant.maxQueuedJobs,
      this.maxQueuedBytes,
      plain.length,
      plain.reduce((a, c) => a + c.bytes, 0),
      ...keyed.flatMap((c) => [c.bytes, c.attempt]),
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
    const { keyed, plain } = split(claims);
    return this.r.citadelQuotaGiveBack(
      2 + keyed.length,
      ...this.counters(tenant),
      ...keyed.map((c) => c.key),
      plain.length,
      plain.reduce((a, c) => a + c.bytes, 0),
      ...keyed.flatMap((c) => [c.bytes, c.attempt]),
    );
  }
}

function split(claims: QuotaClaim[]) {
  return {
    keyed: claims.flatMap((c) => (c.entry ? [{ bytes: c.bytes, ...c.entry }] : [])),
    plain: claims.filter((c) => !c.entry),
  };
}
