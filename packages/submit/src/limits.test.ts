import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type Bucket, RateLimiter } from "./limits.js";

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
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000);
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
    expect(await redis.exists(`${prefix}:rl:samples:a`)).toBe(0);
    expect((await l.takeAll([bucket("a", 10)])).allowed).toBe(true);
  });

  it("charges every bucket or none: one over its burst refuses the others too", async () => {
    const l = new RateLimiter(redis, prefix);
    const ip: Bucket = { scope: "ip", id: "b", rate: 0.0001, burst: 100, cost: 1 };
    const r = await l.takeAll([ip, bucket("b", 50)]);
    expect(r.overBurst).toEqual({ cost: 50, burst: 10 });
    expect(await redis.exists(`${prefix}:rl:ip:b`)).toBe(0);
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
});
