import type { Redis } from "ioredis";

/**
 * A token bucket in Redis, so limits hold across API replicas. One script call per
 * check; state is two fields with a TTL, so idle buckets disappear.
 */
const TOKEN_BUCKET = `
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local allowed = 0
local retry = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 't', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, retry}
`;

export interface LimitResult {
  allowed: boolean;
  retryAfterMs: number;
}

export class RateLimiter {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {
    if (!("citadelBucket" in redis)) redis.defineCommand("citadelBucket", { numberOfKeys: 1, lua: TOKEN_BUCKET });
  }

  async take(scope: string, id: string, rate: number, burst: number, cost = 1): Promise<LimitResult> {
    // A request costing more than the burst could never pass; charge the burst instead.
    const c = Math.min(cost, burst);
    const r = (await (
      this.redis as Redis & { citadelBucket: (...a: (string | number)[]) => Promise<[number, number]> }
    ).citadelBucket(`${this.prefix}:rl:${scope}:${id}`, rate, burst, c, Date.now())) as [number, number];
    return { allowed: r[0] === 1, retryAfterMs: r[1] };
  }
}
