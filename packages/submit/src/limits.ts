import { type CitadelScripts, type RedisConn, scripts } from "@citadel/queue";

/**
 * Token buckets in Redis, so limits hold across API replicas: one script call
 * (tokenBuckets.lua in @citadel/queue) checks several buckets at once and charges them
 * only if all allow it.
 */
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

export class RateLimiter {
  private readonly scripts: CitadelScripts;

  constructor(
    redis: RedisConn,
    private readonly prefix: string,
  ) {
    this.scripts = scripts(redis);
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
    const { refusedBy, retryAfterMs } = await this.scripts.tokenBuckets(
      Date.now(),
      buckets.map((b) => ({
        key: `${this.prefix}:rl:${b.scope}:${b.id}`,
        rate: b.rate,
        burst: b.burst,
        cost: b.cost ?? 1,
      })),
    );
    if (refusedBy === 0) return { allowed: true, retryAfterMs: 0 };
    return { allowed: false, retryAfterMs, scope: buckets[refusedBy - 1]?.scope };
  }

  take(scope: string, id: string, rate: number, burst: number, cost = 1): Promise<LimitResult> {
    return this.takeAll([{ scope, id, rate, burst, cost }]);
  }

  /** Gives tokens back (a charge that turned out not to count); the bucket still never exceeds its burst on refill. */
  async refund(b: Bucket, tokens = 1): Promise<void> {
    await this.takeAll([{ ...b, cost: -tokens }]);
  }
}
