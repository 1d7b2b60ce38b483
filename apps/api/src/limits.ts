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
  /**
   * The request alone costs more than that bucket's burst: no wait makes it fit (it
   * must be split), and nothing was charged.
   */
  overBurst?: { cost: number; burst: number };
}

type BucketCommand = (...args: (string | number)[]) => Promise<[number, number]>;

export class RateLimiter {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {
    if (!("citadelBuckets" in redis)) redis.defineCommand("citadelBuckets", { lua: TOKEN_BUCKETS });
  }

  /**
   * Charges every bucket or none. A request costing more than a bucket's burst is
   * refused outright (never charged the burst: that would let one large request cost
   * no more than a full bucket, whatever its size).
   */
  async takeAll(buckets: Bucket[]): Promise<LimitResult> {
    const over = buckets.find((b) => (b.cost ?? 1) > b.burst);
    if (over) {
      return {
        allowed: false,
        retryAfterMs: 0,
        scope: over.scope,
        overBurst: { cost: over.cost ?? 1, burst: over.burst },
      };
    }
    const keys = buckets.map((b) => `${this.prefix}:rl:${b.scope}:${b.id}`);
    const args = buckets.flatMap((b) => [b.rate, b.burst, b.cost ?? 1]);
    const run = (this.redis as Redis & { citadelBuckets: BucketCommand }).citadelBuckets;
    const [denied, retry] = await run.call(this.redis, keys.length, ...keys, Date.now(), ...args);
    if (denied === 0) return { allowed: true, retryAfterMs: 0 };
    return { allowed: false, retryAfterMs: retry, scope: buckets[denied - 1]?.scope };
  }

  take(scope: string, id: string, rate: number, burst: number, cost = 1): Promise<LimitResult> {
    return this.takeAll([{ scope, id, rate, burst, cost }]);
  }

  /** Gives tokens back (a charge that turned out not to count); the bucket still never exceeds its burst on refill. */
  async refund(b: Bucket, tokens = 1): Promise<void> {
    await this.takeAll([{ ...b, cost: -tokens }]);
  }
}
