import { randomBytes } from "node:crypto";
import { commandName } from "@citadel/queue";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type Bucket, bucketKey, RateLimiter } from "./limits.js";

// Token buckets against a real Redis (the one the test run shares, under a prefix of
// this file's own). The rate is so low that nothing refills while a test runs.

let redis: Redis;
const prefix = `{lim-${randomBytes(4).toString("hex")}}`;

beforeAll(() => {
  redis = new Redis(inject("redisUrl"));
});
afterAll(async () => {
  let cursor = "0";
  do {
    // Every family's keys start with the prefix's tag ("{lim-…" then ":t:…}" or "}").
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix.slice(0, -1)}*`, "COUNT", 1000);
    cursor = next;
    if (keys.length) await redis.del(...keys);
  } while (cursor !== "0");
  await redis.quit();
});

const bucket = (id: string, cost?: number): Bucket => ({
  scope: "samples",
  id,
  rate: 0.0001,
  burst: 10,
  ...(cost === undefined ? {} : { cost }),
});

describe("RateLimiter", () => {
  it("refuses a request costing more than the burst, charging nothing", async () => {
    const l = new RateLimiter(redis, prefix);
    const r = await l.takeAll([bucket("a", 11)]);
    expect(r).toMatchObject({ allowed: false, scope: "samples", overBurst: { cost: 11, burst: 10 } });
    // Nothing was charged: the whole burst is still there, and nothing was written.
    expect(await redis.exists(bucketKey(prefix, "samples", "a").key)).toBe(0);
    expect((await l.takeAll([bucket("a", 10)])).allowed).toBe(true);
  });

  it("charges every bucket or none: one over its burst refuses the others too", async () => {
    const l = new RateLimiter(redis, prefix);
    const ip: Bucket = { scope: "ip", id: "b", rate: 0.0001, burst: 100, cost: 1 };
    const r = await l.takeAll([ip, bucket("b", 50)]);
    expect(r.overBurst).toEqual({ cost: 50, burst: 10 });
    expect(await redis.exists(bucketKey(prefix, "ip", "b").key)).toBe(0);
  });

  it("lets requests within the burst through until it is spent, then tells how long to wait", async () => {
    const l = new RateLimiter(redis, prefix);
    expect((await l.takeAll([bucket("c", 4)])).allowed).toBe(true);
    expect((await l.takeAll([bucket("c", 6)])).allowed).toBe(true);
    const spent = await l.takeAll([bucket("c", 1)]);
    expect(spent.allowed).toBe(false);
    expect(spent.overBurst).toBeUndefined();
    expect(spent.retryAfterMs).toBeGreaterThan(1000);
  });

  it("gives a refunded token back", async () => {
    const l = new RateLimiter(redis, prefix);
    expect((await l.takeAll([bucket("d", 10)])).allowed).toBe(true);
    expect((await l.takeAll([bucket("d", 1)])).allowed).toBe(false);
    await l.refund(bucket("d"));
    expect((await l.takeAll([bucket("d", 1)])).allowed).toBe(true);
    expect((await l.takeAll([bucket("d", 1)])).allowed).toBe(false);
  });

  it("keeps an IP's buckets in the IP's slot and a tenant's in the tenant's, each family its own hash tag", () => {
    expect(bucketKey("{citadel}", "ip", "10.0.0.1").key).toBe("{citadel:ip:10.0.0.1}:rl:ip");
    expect(bucketKey("{citadel}", "board-login", "10.0.0.1").key).toBe("{citadel:ip:10.0.0.1}:rl:board-login");
    expect(bucketKey("{citadel}", "tenant", "acme").key).toBe("{citadel:t:acme}:rl:tenant");
    expect(bucketKey("{citadel}", "samples", "acme")).toEqual({
      tag: "{citadel:t:acme}",
      key: "{citadel:t:acme}:rl:samples",
    });
    expect(bucketKey("{citadel}", "other", "x").key).toBe("{citadel}:rl:other:x");
    // An id that would end the tag early stays in the deployment's slot.
    expect(bucketKey("{citadel}", "ip", "a}b").key).toBe("{citadel}:rl:ip:a}b");
  });

  const perIp = (id: string, burst: number): Bucket => ({ scope: "ip", id, rate: 0.0001, burst });
  const perTenant = (id: string, burst: number): Bucket => ({ scope: "tenant", id, rate: 0.0001, burst });
  const tokens = async (b: Bucket) =>
    Number(((await redis.get(bucketKey(prefix, b.scope, b.id).key)) ?? "").split(":")[0]);

  it("refunds the groups that charged when another slot's bucket refuses, and answers with the refuser", async () => {
    const l = new RateLimiter(redis, prefix);
    const ip = perIp("10.1.0.1", 5);
    const tenant = perTenant("refund-a", 2);
    expect(await l.takeAll([ip, tenant])).toEqual({ allowed: true, retryAfterMs: 0 });
    expect(await l.takeAll([ip, tenant])).toEqual({ allowed: true, retryAfterMs: 0 });
    expect(await tokens(ip)).toBeCloseTo(3, 3);
    // The tenant is spent: refused by it, and the IP's charge is given back.
    const r = await l.takeAll([ip, tenant]);
    expect(r).toMatchObject({ allowed: false, scope: "tenant" });
    expect(r.retryAfterMs).toBeGreaterThan(1000);
    expect(await tokens(ip)).toBeCloseTo(3, 3);
    expect(await tokens(tenant)).toBeCloseTo(0, 3);
    // The other way round: the IP refuses, the tenant's charge comes back.
    const other = perTenant("refund-b", 10);
    const spentIp = perIp("10.1.0.2", 1);
    expect((await l.takeAll([spentIp])).allowed).toBe(true);
    expect(await l.takeAll([spentIp, other])).toMatchObject({ allowed: false, scope: "ip" });
    expect(await tokens(other)).toBeCloseTo(10, 3);
  });

  it("answers with the first refusing bucket in the request's order when several slots refuse", async () => {
    const l = new RateLimiter(redis, prefix);
    const ip = perIp("10.1.0.3", 1);
    const tenant = perTenant("refund-c", 1);
    expect((await l.takeAll([ip, tenant])).allowed).toBe(true);
    expect(await l.takeAll([ip, tenant])).toMatchObject({ allowed: false, scope: "ip" });
    expect(await l.takeAll([tenant, ip])).toMatchObject({ allowed: false, scope: "tenant" });
  });

  it("refunds the charged groups and throws when another group's call fails", async () => {
    const conn = new Redis(inject("redisUrl"));
    try {
      const l = new RateLimiter(conn, prefix);
      const ip = perIp("10.1.0.4", 5);
      const tenant = perTenant("refund-d", 5);
      const broken = bucketKey(prefix, "tenant", tenant.id).key;
      // The tenant's slot fails (as a shard down would); the IP's slot answers.
      const client = conn as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
      const name = commandName("tokenBuckets");
      const real = client[name] as (...args: unknown[]) => Promise<unknown>;
      let calls = 0;
      client[name] = (...args: unknown[]) => {
        calls++;
        return args.includes(broken) ? Promise.reject(new Error("CLUSTERDOWN")) : real.apply(conn, args);
      };
      await expect(l.takeAll([ip, tenant])).rejects.toThrow("CLUSTERDOWN");
      // One charge per group and one refund: nothing retried, the IP's tokens all back.
      expect(calls).toBe(3);
      expect(await tokens(ip)).toBeCloseTo(5, 3);
    } finally {
      conn.disconnect();
    }
  });
});
