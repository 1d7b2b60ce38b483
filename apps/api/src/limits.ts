import type { Redis } from "ioredis";

/**
 * Token buckets in Redis, so limits hold across API replicas. One script call checks
 * several buckets at once (per-IP and per-tenant on every request) and charges them
 * only if all allow it; state is two fields with a TTL, so idle buckets disappear.
 */
const TOKEN_BUCKETS = `
local now = tonumber(ARGV[1])
local n = #KEYS
local tokens = {}
for i = 1, n do
  local rate = tonumber(ARGV[2 + (i - 1) * 3])
  local burst = tonumber(ARGV[3 + (i - 1) * 3])
  local cost = tonumber(ARGV[4 + (i - 1) * 3])
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local t = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  t = math.min(burst, t + (now - ts) * rate / 1000)
  if t < cost then
    return {i, math.ceil((cost - t) * 1000 / rate)}
  end
  tokens[i] = t - cost
end
for i = 1, n do
  local rate = tonumber(ARGV[2 + (i - 1) * 3])
  local burst = tonumber(ARGV[3 + (i - 1) * 3])
  redis.call('HSET', KEYS[i], 't', tokens[i], 'ts', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst * 1000 / rate) + 1000)
end
return {0, 0}
`;

export interface Bucket {
  scope: string;
  id: string;
  rate: number;
  burst: number;
  cost?: number;
}

export interface LimitResult {
  allowed: boolean;
  retryAfterMs: number;
  /** The bucket that refused, when one did. */
  scope?: string;
}

type BucketCommand = (...args: (string | number)[]) => Promise<[number, number]>;

export class RateLimiter {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {
    if (!("citadelBuckets" in redis)) redis.defineCommand("citadelBuckets", { lua: TOKEN_BUCKETS });
  }

  /** Charges every bucket or none; a request costing more than a burst is charged the burst. */
  async takeAll(buckets: Bucket[]): Promise<LimitResult> {
    const keys = buckets.map((b) => `${this.prefix}:rl:${b.scope}:${b.id}`);
    const args = buckets.flatMap((b) => [b.rate, b.burst, Math.min(b.cost ?? 1, b.burst)]);
    const run = (this.redis as Redis & { citadelBuckets: BucketCommand }).citadelBuckets;
    const [denied, retry] = await run.call(this.redis, keys.length, ...keys, Date.now(), ...args);
    if (denied === 0) return { allowed: true, retryAfterMs: 0 };
    return { allowed: false, retryAfterMs: retry, scope: buckets[denied - 1]?.scope };
  }

  take(scope: string, id: string, rate: number, burst: number, cost = 1): Promise<LimitResult> {
    return this.takeAll([{ scope, id, rate, burst, cost }]);
  }
}
