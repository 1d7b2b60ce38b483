import {
  type CitadelScripts,
  type RedisConn,
  scripts,
  type TokenBucketCharge,
  tagged,
  tenantPrefix,
} from "@citadel/queue";

/**
 * Token buckets in Redis, so limits hold across API replicas. A request's buckets are
 * grouped by hash slot (per-IP buckets in the IP's slot, per-tenant ones in the
 * tenant's): one script call (tokenBuckets.lua in @citadel/queue) per group, groups in
 * parallel, each charging its buckets only if all of them allow it.
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

/**
 * Which key family each scope's buckets live in: an IP's buckets share `{<tag>:ip:<ip>}`,
 * a tenant's share its tenant slot (`{<tag>:t:<tenant>}`, beside its quota). Other
 * scopes stay in the deployment's slot.
 */
const FAMILY = new Map<string, "ip" | "tenant">([
  ["ip", "ip"],
  ["board-login", "ip"],
  ["tenant", "tenant"],
  ["samples", "tenant"],
]);

/** The bucket's key; buckets whose keys share a hash tag share a slot (no CRC needed to group them). */
export function bucketKey(prefix: string, scope: string, id: string): { tag: string; key: string } {
  const family = FAMILY.get(scope);
  // An id with braces would end the hash tag early: such ids stay in the deployment's slot.
  const base =
    family === undefined || /[{}]/.test(id)
      ? prefix
      : family === "ip"
        ? tagged(prefix, `ip:${id}`)
        : tenantPrefix(prefix, id);
  return { tag: base, key: base === prefix ? `${prefix}:rl:${scope}:${id}` : `${base}:rl:${scope}` };
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
   * no more than a full bucket, whatever its size). Buckets in different slots are
   * charged by one call per slot, in parallel; when any refuses (or fails), the groups
   * that charged are refunded once, so a request is charged at most once.
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
    const groups = new Map<string, { index: number; key: string; bucket: Bucket }[]>();
    buckets.forEach((bucket, index) => {
      const { tag, key } = bucketKey(this.prefix, bucket.scope, bucket.id);
      const group = groups.get(tag) ?? [];
      group.push({ index, key, bucket });
      groups.set(tag, group);
    });
    const now = Date.now();
    // A refund is stamped when it happens: a bucket another request moved on since would
    // otherwise read an earlier time as time running backwards and lose tokens.
    const charge = (group: { key: string; bucket: Bucket }[], sign: 1 | -1) =>
      this.scripts.tokenBuckets(
        sign === 1 ? now : Date.now(),
        group.map(({ key, bucket: b }) => ({ key, rate: b.rate, burst: b.burst, cost: sign * (b.cost ?? 1) })),
      );
    const list = [...groups.values()];
    const answers = await Promise.allSettled(list.map((g) => charge(g, 1)));
    let refused: { index: number; retryAfterMs: number } | null = null;
    let failure: { reason: unknown } | null = null;
    const charged: (typeof list)[number][] = [];
    for (const [i, a] of answers.entries()) {
      const group = list[i] ?? [];
      if (a.status === "rejected") failure ??= { reason: a.reason };
      else if (a.value.refusedBy === 0) charged.push(group);
      else {
        // The first refusing bucket in the request's own order answers, as one call would.
        const index = group[a.value.refusedBy - 1]?.index ?? 0;
        if (refused === null || index < refused.index) refused = { index, retryAfterMs: a.value.retryAfterMs };
      }
    }
    if (failure === null && refused === null) return { allowed: true, retryAfterMs: 0 };
    await Promise.all(charged.map((g) => charge(g, -1)));
    if (failure !== null) throw failure.reason;
    return { allowed: false, retryAfterMs: refused?.retryAfterMs ?? 0, scope: buckets[refused?.index ?? 0]?.scope };
  }

  /**
   * A bucket's charge for a script of its slot to apply with its own work (quotaReserve.lua
   * charges a tenant's sample bucket beside its quota): `tag` says the slot.
   */
  charge(b: Bucket): { tag: string; charge: TokenBucketCharge } {
    const { tag, key } = bucketKey(this.prefix, b.scope, b.id);
    return { tag, charge: { key, rate: b.rate, burst: b.burst, cost: b.cost ?? 1 } };
  }

  take(scope: string, id: string, rate: number, burst: number, cost = 1): Promise<LimitResult> {
    return this.takeAll([{ scope, id, rate, burst, cost }]);
  }

  /** Gives tokens back (a charge that turned out not to count); the bucket still never exceeds its burst on refill. */
  async refund(b: Bucket, tokens = 1): Promise<void> {
    await this.takeAll([{ ...b, cost: -tokens }]);
  }
}
