import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it, vi } from "vitest";
import { monitorRedis } from "../../../../test/support/redis-monitor.js";
import { commandName, type QuotaJob, type ScriptName, scriptSources, scripts } from "./index.js";

// Every script against the real Redis the run shares, under this file's own prefix.

const prefix = `{scripts-${randomBytes(4).toString("hex")}}`;
const k = (name: string): string => `${prefix}:${name}`;
let redis: Redis;

beforeAll(() => {
  redis = new Redis(inject("redisUrl"));
});
afterAll(async () => {
  let cursor = "0";
  do {
    const [next, found] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000);
    cursor = next;
    if (found.length) await redis.del(...found);
  } while (cursor !== "0");
  await redis.quit();
});

describe("the script files", () => {
  const folder = fileURLToPath(new URL(".", import.meta.url));

  it("have their shared parts included in place (a step two scripts share is written once)", () => {
    for (const s of Object.values(scriptSources)) expect(s.lua, s.file).not.toMatch(/@include/);
    const notify = readFileSync(new URL("./includes/batchNotify.lua", import.meta.url), "utf8").trimEnd();
    expect(scriptSources.batchRecord.lua).toContain(notify);
    expect(scriptSources.batchSettled.lua).toContain(notify);
  });

  it("are all loaded, and each header documents its keys, arguments and result", () => {
    const onDisk = readdirSync(folder).filter((f) => f.endsWith(".lua"));
    expect(
      Object.values(scriptSources)
        .map((s) => s.file)
        .sort(),
    ).toEqual(onDisk.sort());
    for (const s of Object.values(scriptSources)) {
      const header = /^--\[\[([\s\S]*?)\]\]/.exec(s.lua)?.[1] ?? "";
      expect(header, s.file).toMatch(/\n\s+Input/);
      expect(header, s.file).toMatch(/KEYS\[/);
      expect(header, s.file).toMatch(/\n\s+Output:/);
      if (/ARGV\[/.test(s.lua.slice(header.length + 4))) expect(header, s.file).toMatch(/ARGV\[/);
    }
  });

  it("take their key count from the file name when it has one", () => {
    expect(scriptSources.quotaRelease.numberOfKeys).toBe(3);
    expect(scriptSources.idempotencyConfirm.numberOfKeys).toBe(1);
    expect(scriptSources.quotaReserve.numberOfKeys).toBeUndefined();
    expect(scriptSources.tokenBuckets.numberOfKeys).toBeUndefined();
  });
});

describe("scripts(redis)", () => {
  it("defines each script once per client, however often it is asked", async () => {
    const client = new Redis(inject("redisUrl"));
    try {
      const define = vi.spyOn(client, "defineCommand");
      const first = scripts(client);
      const again = scripts(client);
      expect(again).toBe(first);
      const names = Object.keys(scriptSources) as ScriptName[];
      expect(define.mock.calls.map((c) => c[0]).sort()).toEqual(names.map(commandName).sort());
      // A second client gets its own definitions.
      const other = new Redis(inject("redisUrl"));
      const defineOther = vi.spyOn(other, "defineCommand");
      expect(scripts(other)).not.toBe(first);
      expect(defineOther).toHaveBeenCalledTimes(names.length);
      other.disconnect();
    } finally {
      client.disconnect();
    }
  });

  it("sends the script once per connection, then only its SHA (EVALSHA)", async () => {
    const client = new Redis(inject("redisUrl"));
    const tag = k(`monitor-${randomBytes(4).toString("hex")}`);
    const seen: string[][] = [];
    const sentinel = `${tag}:sentinel`;
    let sentinelSeen = () => {};
    const sawSentinel = new Promise<void>((resolve) => (sentinelSeen = resolve));
    const monitor = await monitorRedis(inject("redisUrl"), ({ args, source }) => {
      if (source.includes("lua") || !args.some((a) => a.startsWith(tag))) return;
      if (args.includes(sentinel)) sentinelSeen();
      else seen.push(args);
    });
    try {
      const s = scripts(client);
      for (let i = 0; i < 3; i++) await s.quotaRelease(`${tag}:jobs`, `${tag}:bytes`, `${tag}:held:${i}`);
      // MONITOR reports commands in the order Redis ran them: once the sentinel shows, every call has.
      await client.get(sentinel);
      await sawSentinel;
      const sha = createHash("sha1").update(scriptSources.quotaRelease.lua).digest("hex");
      expect(seen.map((a) => a[0]?.toLowerCase())).toEqual(["eval", "evalsha", "evalsha"]);
      // The first carries the script's text (MONITOR escapes its newlines), the others its SHA.
      expect(seen[0]?.[1]).toContain("redis.call('GETDEL', KEYS[3])");
      expect(seen.slice(1).map((a) => a[1])).toEqual([sha, sha]);
      expect(await redis.script("EXISTS", sha)).toEqual([1]);
    } finally {
      monitor.close();
      client.disconnect();
    }
  });
});

describe("quota scripts", () => {
  let n = 0;
  /** A fresh tenant's counters and a job maker under them. */
  const tenant = () => {
    const t = `t${n++}`;
    const counters = { jobsKey: k(`${t}:jobs`), bytesKey: k(`${t}:bytes`) };
    const job = (id: string, bytes: number, entry?: QuotaJob["entry"]): QuotaJob => ({
      marker: k(`${t}:held:${id}`),
      bytes,
      ...(entry ? { entry } : {}),
    });
    const counts = async () => [Number(await redis.get(counters.jobsKey)), Number(await redis.get(counters.bytesKey))];
    return { counters, job, counts };
  };
  const bounds = { maxJobs: 3, maxBytes: 1000, markerTtlMs: 60_000 };

  it("reserves jobs and bytes with a marker per job, and refuses past either bound keeping nothing", async () => {
    const s = scripts(redis);
    const { counters, job, counts } = tenant();
    const taken = await s.quotaReserve({ ...counters, ...bounds, jobs: [job("a", 100), job("b", 200)] });
    expect(taken).toEqual({ verdict: 0, jobsBefore: 0, retryAfterMs: 0, reservedNow: 2 });
    expect(await counts()).toEqual([2, 300]);
    expect(await redis.get(job("a", 0).marker)).toBe("100");
    expect(await redis.pttl(job("a", 0).marker)).toBeGreaterThan(0);

    const tooMany = await s.quotaReserve({ ...counters, ...bounds, jobs: [job("c", 1), job("d", 1)] });
    expect(tooMany).toEqual({ verdict: 1, jobsBefore: 2, retryAfterMs: 0, reservedNow: 0 });
    const tooBig = await s.quotaReserve({ ...counters, ...bounds, jobs: [job("c", 701)] });
    expect(tooBig).toEqual({ verdict: 2, jobsBefore: 2, retryAfterMs: 0, reservedNow: 0 });
    expect(await counts()).toEqual([2, 300]);
    expect(await redis.exists(job("c", 0).marker, job("d", 0).marker)).toBe(0);
  });

  it("charges the sample bucket in the same call, only when the reservation is taken", async () => {
    const s = scripts(redis);
    const { counters, job, counts } = tenant();
    const key = k(`samples-${n}`);
    const now = Date.now();
    // 1 token per second, 10 at most: cost 6 fits once.
    const bucket = (cost: number, nowMs = now) => ({ charge: { key, rate: 1, burst: 10, cost }, nowMs });
    const tokens = async () => Number((await redis.get(key))?.split(":")[0]);
    expect(await s.quotaReserve({ ...counters, ...bounds, jobs: [job("a", 1)], bucket: bucket(6) })).toEqual({
      verdict: 0,
      jobsBefore: 0,
      retryAfterMs: 0,
      reservedNow: 1,
    });
    expect(await tokens()).toBe(4);
    expect(await redis.pttl(key)).toBeGreaterThan(10_000);
    // The bucket refuses first: nothing reserved, nothing charged, and when it could pass.
    expect(await s.quotaReserve({ ...counters, ...bounds, jobs: [job("b", 1)], bucket: bucket(6) })).toEqual({
      verdict: 4,
      jobsBefore: 0,
      retryAfterMs: 2000,
      reservedNow: 0,
    });
    expect(await counts()).toEqual([1, 1]);
    expect(await redis.exists(job("b", 0).marker)).toBe(0);
    // The quota refuses: the bucket is not charged either.
    const big = await s.quotaReserve({ ...counters, ...bounds, jobs: [job("c", 5000)], bucket: bucket(3) });
    expect(big.verdict).toBe(2);
    expect(await tokens()).toBe(4);
    // Refilled over time, never past its burst; a cost of 0 leaves the bucket alone.
    expect((await s.quotaReserve({ ...counters, ...bounds, jobs: [job("d", 1)], bucket: bucket(0) })).verdict).toBe(0);
    expect(await tokens()).toBe(4);
    const later = await s.quotaReserve({
      ...counters,
      ...bounds,
      jobs: [job("e", 1)],
      bucket: bucket(10, now + 60_000),
    });
    expect(later.verdict).toBe(0);
    expect(await tokens()).toBe(0);
  });

  it("reserves a keyed job once, only under the entry's current attempt", async () => {
    const s = scripts(redis);
    const { counters, job, counts } = tenant();
    const entry = k(`entry-${n}`);
    await redis.hset(entry, "attempt", "2", "reserved", "0");
    const stale = await s.quotaReserve({ ...counters, ...bounds, jobs: [job("a", 10, { key: entry, attempt: 1 })] });
    expect(stale.verdict).toBe(3);
    expect(await counts()).toEqual([0, 0]);

    const keyed = job("a", 10, { key: entry, attempt: 2 });
    expect(await s.quotaReserve({ ...counters, ...bounds, jobs: [job("x", 5), keyed] })).toEqual({
      verdict: 0,
      jobsBefore: 0,
      retryAfterMs: 0,
      reservedNow: 2,
    });
    expect(await redis.hget(entry, "reserved")).toBe("2");
    // Already reserved under its key: a retry counts nothing again.
    expect(await s.quotaReserve({ ...counters, ...bounds, jobs: [keyed] })).toEqual({
      verdict: 0,
      jobsBefore: 2,
      retryAfterMs: 0,
      reservedNow: 0,
    });
    expect(await counts()).toEqual([2, 15]);
  });

  it("gives back only the caller's own reservations, each once, freeing their keys", async () => {
    const s = scripts(redis);
    const { counters, job, counts } = tenant();
    const mine = k(`entry-mine-${n}`);
    const adopted = k(`entry-adopted-${n}`);
    await redis.hset(mine, "state", "pending", "attempt", "1", "reserved", "0");
    await redis.hset(adopted, "state", "pending", "attempt", "2", "reserved", "0");
    const plain = job("p", 7);
    const keyed = job("k", 11, { key: mine, attempt: 1 });
    await s.quotaReserve({ ...counters, ...bounds, jobs: [plain, keyed] });
    // Reserved by attempt 1, now owned by attempt 2: an earlier attempt's enqueue may still land.
    await s.quotaReserve({ ...counters, ...bounds, jobs: [job("o", 13, { key: adopted, attempt: 2 })] });
    await redis.hset(adopted, "attempt", "3");
    expect(await counts()).toEqual([3, 31]);

    const jobs = [plain, keyed, job("o", 0, { key: adopted, attempt: 3 })];
    expect(await s.quotaGiveBack({ ...counters, jobs })).toBe(2);
    expect(await counts()).toEqual([1, 13]);
    expect(await redis.exists(mine)).toBe(0);
    expect(await redis.exists(adopted)).toBe(1);
    expect(await s.quotaGiveBack({ ...counters, jobs })).toBe(0);
    expect(await counts()).toEqual([1, 13]);
  });

  it("releases a settled job's share once and never below zero", async () => {
    const s = scripts(redis);
    const { counters, job, counts } = tenant();
    const a = job("a", 40);
    await s.quotaReserve({ ...counters, ...bounds, jobs: [a] });
    expect(await s.quotaRelease(counters.jobsKey, counters.bytesKey, a.marker)).toBe(true);
    expect(await s.quotaRelease(counters.jobsKey, counters.bytesKey, a.marker)).toBe(false);
    expect(await counts()).toEqual([0, 0]);
    // Counters that drifted low (an expired marker's job released late) stop at zero.
    await redis.set(a.marker, "40");
    expect(await s.quotaRelease(counters.jobsKey, counters.bytesKey, a.marker)).toBe(true);
    expect(await counts()).toEqual([0, 0]);
  });

  it("releases several settled jobs' shares in one call, each once and never below zero", async () => {
    const s = scripts(redis);
    const { counters, job, counts } = tenant();
    const [a, b, c] = [job("a", 40), job("b", 60), job("c", 5)];
    await s.quotaReserve({ ...counters, ...bounds, jobs: [a, b, c] });
    expect(await s.quotaRelease(counters.jobsKey, counters.bytesKey, b.marker)).toBe(true);
    expect(await s.quotaReleaseMany(counters.jobsKey, counters.bytesKey, [a.marker, b.marker])).toBe(1);
    expect(await counts()).toEqual([1, 5]);
    expect(await s.quotaReleaseMany(counters.jobsKey, counters.bytesKey, [a.marker, b.marker])).toBe(0);
    expect(await counts()).toEqual([1, 5]);
    // Counters that drifted low stop at zero.
    await redis.set(counters.jobsKey, "0");
    await redis.set(a.marker, "40");
    expect(await s.quotaReleaseMany(counters.jobsKey, counters.bytesKey, [a.marker, c.marker])).toBe(2);
    expect(await counts()).toEqual([0, 0]);
    expect(await s.quotaReleaseMany(counters.jobsKey, counters.bytesKey, [])).toBe(0);
  });
});

describe("tokenBuckets", () => {
  const slow = (key: string, cost: number) => ({ key: k(key), rate: 0.001, burst: 10, cost });
  /** Tokens in a bucket's state ("tokens:updated at"). */
  const tokensIn = async (key: string) => Number((await redis.get(k(key)))?.split(":")[0]);

  it("charges every bucket or none, naming the first that refuses and when it could pass", async () => {
    const s = scripts(redis);
    const now = Date.now();
    expect(await s.tokenBuckets(now, [slow("ip", 4), slow("tenant", 8)])).toEqual({ refusedBy: 0, retryAfterMs: 0 });
    const refused = await s.tokenBuckets(now, [slow("ip", 1), slow("tenant", 3)]);
    // The tenant bucket holds 2 tokens; the third refills in 1 token / 0.001 per second = 1,000,000 ms.
    expect(refused).toEqual({ refusedBy: 2, retryAfterMs: 1_000_000 });
    expect(await tokensIn("ip")).toBe(6);
    expect(await redis.pttl(k("ip"))).toBeGreaterThan(0);
  });

  it("reads a bucket left in the older format (a hash) as full, and replaces it", async () => {
    const s = scripts(redis);
    await redis.hset(k("old"), "t", "0", "ts", String(Date.now()));
    expect(await s.tokenBuckets(Date.now(), [slow("old", 4)])).toEqual({ refusedBy: 0, retryAfterMs: 0 });
    expect(await tokensIn("old")).toBe(6);
  });

  it("refunds with a negative cost, never past the burst on refill", async () => {
    const s = scripts(redis);
    const now = Date.now();
    await s.tokenBuckets(now, [slow("refund", 10)]);
    await s.tokenBuckets(now, [slow("refund", -3)]);
    expect(await tokensIn("refund")).toBe(3);
    await s.tokenBuckets(now + 1_000_000_000, [slow("refund", 0)]);
    expect(await tokensIn("refund")).toBe(10);
  });
});

describe("idempotency scripts", () => {
  const first = { id: "m.job", fp: "fp1", model: "m", version: "1.0.0" };

  it("claim creates a pending entry once and returns the existing one after", async () => {
    const s = scripts(redis);
    const key = k("idem-claim");
    expect(await s.idempotencyClaim(key, first, 1000, 60_000, 5000)).toBeNull();
    expect(await redis.pttl(key)).toBeGreaterThan(0);
    expect(await s.idempotencyClaim(key, { ...first, id: "other" }, 2000, 60_000, 9000)).toEqual([
      "m.job",
      "fp1",
      "m",
      "1.0.0",
      "pending",
      "1",
      "0",
      "1000",
      "5000",
    ]);
  });

  it("take-over waits for the lease, bumps the attempt, and stops once confirmed", async () => {
    const s = scripts(redis);
    const key = k("idem-take");
    await s.idempotencyClaim(key, first, 1000, 60_000, 5000);
    expect(await s.idempotencyTakeOver(key, 9000, 4999)).toBe(-1);
    expect(await s.idempotencyTakeOver(key, 9000, 5000)).toBe(2);
    expect(await redis.hget(key, "lease")).toBe("9000");
    expect(await s.idempotencyConfirm(key)).toBe(1);
    expect(await s.idempotencyConfirm(key)).toBe(0);
    expect(await s.idempotencyTakeOver(key, 20_000, 10_000)).toBe(0);
  });

  it("reopen takes back a confirmed entry once, keeping the reservation only while its marker is held", async () => {
    const s = scripts(redis);
    const key = k("idem-reopen");
    const marker = k("idem-reopen-held");
    await s.idempotencyClaim(key, first, 1000, 60_000, 5000);
    // Pending: not reopened (take-over is the pending path).
    expect(await s.idempotencyReopen(key, marker, first.id, 9000)).toEqual({ attempt: -1, reservationKept: false });
    await redis.hset(key, "reserved", "1");
    await s.idempotencyConfirm(key);
    expect(await s.idempotencyReopen(key, marker, "m.other", 9000)).toEqual({ attempt: -1, reservationKept: false });
    // The job never ended (its marker held): the reservation stays with the entry.
    await redis.set(marker, "4");
    expect(await s.idempotencyReopen(key, marker, first.id, 9000)).toEqual({ attempt: 2, reservationKept: true });
    expect(await redis.hmget(key, "state", "attempt", "lease", "reserved")).toEqual(["pending", "2", "9000", "1"]);
    // Once: a second request finds it pending.
    expect(await s.idempotencyReopen(key, marker, first.id, 9000)).toEqual({ attempt: -1, reservationKept: false });
    // The job ended (its share given back) and then vanished: the next attempt reserves again.
    await s.idempotencyConfirm(key);
    await redis.del(marker);
    expect(await s.idempotencyReopen(key, marker, first.id, 9500)).toEqual({ attempt: 3, reservationKept: false });
    expect(await redis.hmget(key, "state", "reserved")).toEqual(["pending", "0"]);
  });

  it("unclaim frees only the current attempt's pending entry with nothing reserved", async () => {
    const s = scripts(redis);
    const key = k("idem-unclaim");
    await s.idempotencyClaim(key, first, 1000, 60_000, 5000);
    await s.idempotencyTakeOver(key, 9000, 6000);
    expect(await s.idempotencyUnclaim(key, 1)).toBe(0);
    await redis.hset(key, "reserved", "2");
    expect(await s.idempotencyUnclaim(key, 2)).toBe(0);
    await redis.hset(key, "reserved", "0");
    expect(await s.idempotencyUnclaim(key, 2)).toBe(1);
    expect(await redis.exists(key)).toBe(0);
  });
});

describe("notification scripts", () => {
  let n = 0;
  const stream = () => k(`notifications-${n++}`);
  /** The stream's entries as field maps, oldest first. */
  const entries = async (key: string) =>
    (await redis.xrange(key, "-", "+")).map(([, f]) => {
      const m: Record<string, string> = {};
      for (let i = 0; i + 1 < f.length; i += 2) m[f[i] as string] = f[i + 1] as string;
      return m;
    });

  it("settleFinal drops a final job's inputs and adds its outbox entry, built from its own hash; nothing while it runs", async () => {
    const s = scripts(redis);
    const out = stream();
    const job = k(`sf-job-${n}`);
    const inputs = `${job}:in`;
    const call = (extra: Partial<Parameters<typeof s.settleFinal>[1]> = {}) =>
      s.settleFinal([job, inputs, out], { jobId: "m.abc", tenant: "acme", maxLen: 1000, ...extra });
    await redis.hset(job, { data: "{}", processedOn: 1 });
    await redis.set(inputs, "bytes");
    expect(await call()).toBe(-1);
    expect(await redis.exists(inputs)).toBe(1);
    await redis.hset(job, { finishedOn: 1700000000000, returnvalue: '{"outputs":{}}' });
    expect(await call({ notify: { url: "https://example.com/hook" } })).toBe(1);
    expect(await redis.exists(inputs)).toBe(0);
    await redis.hdel(job, "returnvalue");
    await redis.hset(job, "failedReason", "CANCELLED: the job was cancelled");
    expect(await call({ batch: { id: "batch_1", line: 3, customId: "c-7" } })).toBe(1);
    await redis.hset(job, "failedReason", "TIMEOUT: too slow");
    expect(await call({ tenant: undefined, notify: {} })).toBe(1);
    await redis.hset(job, { returnvalue: '{"outputs":{"y":1}}' });
    expect(await call({ batch: { id: "batch_2", line: 1 } })).toBe(1);
    await redis.del(job);
    expect(await call({ notify: {}, fallback: { status: "cancelled", finishedAt: 42 } })).toBe(1);
    expect(await call({ batch: { id: "batch_3", line: 2 }, notify: {} })).toBe(1);
    expect(await entries(out)).toEqual([
      { id: "m.abc", t: "acme", s: "completed", f: "1700000000000", u: "https://example.com/hook" },
      {
        id: "m.abc",
        t: "acme",
        s: "cancelled",
        f: "1700000000000",
        b: "batch_1",
        l: "3",
        r: '{"j":"m.abc","c":"c-7","f":1700000000000,"s":"cancelled","e":"CANCELLED: the job was cancelled"}',
      },
      { id: "m.abc", t: "", s: "failed", f: "1700000000000", u: "" },
      // A retried job keeps an earlier attempt's failedReason: its returnvalue decides.
      {
        id: "m.abc",
        t: "acme",
        s: "completed",
        f: "1700000000000",
        b: "batch_2",
        l: "1",
        r: '{"j":"m.abc","f":1700000000000,"s":"completed","r":{"outputs":{"y":1}}}',
      },
      { id: "m.abc", t: "acme", s: "cancelled", f: "42", u: "" },
      // Gone without a named outcome: the share still goes back, nothing else is claimed.
      { id: "m.abc", t: "acme", s: "", f: "0" },
    ]);
  });

  it("notifies a batch once, when it is sealed and its last accepted line is recorded, whichever comes last", async () => {
    const s = scripts(redis);
    for (const sealFirst of [true, false]) {
      const out = stream();
      const meta = k(`nb-${n}`);
      const results = `${meta}:results`;
      const batchId = `batch_${n}`;
      await redis.hset(meta, { created: 1, sealed: 0, cancel: 0, accepted: 2, notify: "https://example.com/b" });
      await redis.pexpire(meta, 60_000);
      const record = (line: number) =>
        s.batchRecord([meta, results, out], {
          line,
          record: `{"j":"m.${line}","f":5,"s":"completed","r":{}}`,
          status: "completed",
          tenant: "acme",
          batchId,
          maxLen: 1000,
        });
      const seal = () => s.batchSettled([meta, out], { tenant: "acme", batchId, maxLen: 1000, seal: true });
      expect(await record(1)).toBe(1);
      if (sealFirst) expect(await seal()).toBe(0);
      expect(await entries(out)).toEqual([]);
      expect(await record(2)).toBe(1);
      if (!sealFirst) expect(await seal()).toBe(1);
      // Once: a second seal or a repeated record adds nothing.
      expect(await seal()).toBe(0);
      expect(await record(2)).toBe(0);
      expect(await redis.hgetall(results)).toEqual({
        1: '{"j":"m.1","f":5,"s":"completed","r":{}}',
        2: '{"j":"m.2","f":5,"s":"completed","r":{}}',
      });
      expect(await redis.hget(meta, "completed")).toBe("2");
      const got = await entries(out);
      expect(got).toHaveLength(1);
      expect(got[0]).toMatchObject({
        k: "batch",
        id: batchId,
        t: "acme",
        e: "batch.completed",
        u: "https://example.com/b",
      });
    }
  });

  it("notifies a cancelled batch as cancelled, and never a batch that asked for no notification", async () => {
    const s = scripts(redis);
    const out = stream();
    const quiet = k(`nb-quiet-${n}`);
    await redis.hset(quiet, { created: 1, sealed: 0, cancel: 0, accepted: 0 });
    expect(await s.batchSettled([quiet, out], { tenant: "acme", batchId: "batch_q", maxLen: 1000, seal: true })).toBe(
      0,
    );
    const cancelled = k(`nb-cancel-${n}`);
    await redis.hset(cancelled, { created: 1, sealed: 0, cancel: 1, accepted: 1, cancelled: 1, notify: "tenant" });
    expect(
      await s.batchSettled([cancelled, out], { tenant: "acme", batchId: "batch_c", maxLen: 1000, seal: false }),
    ).toBe(1);
    expect(
      await s.batchSettled([k("nb-gone"), out], { tenant: "acme", batchId: "batch_g", maxLen: 1000, seal: true }),
    ).toBe(-1);
    expect(await redis.exists(k("nb-gone"))).toBe(0);
    expect(await entries(out)).toEqual([
      expect.objectContaining({ k: "batch", id: "batch_c", e: "batch.cancelled", u: "" }),
    ]);
  });
});

describe("run as production runs it", () => {
  it("finds the .lua files from any working directory (a child node process from source)", async () => {
    const entry = new URL("./index.ts", import.meta.url).href;
    const marker = k("spawned-held");
    await redis.set(marker, "5");
    const program = `
      const { scripts } = await import(${JSON.stringify(entry)});
      const { Redis } = await import(${JSON.stringify(import.meta.resolve("ioredis"))});
      const r = new Redis(process.env.REDIS_URL);
      const released = await scripts(r).quotaRelease(process.env.J, process.env.B, process.env.M);
      process.stdout.write(JSON.stringify({ released }));
      r.disconnect();`;
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["--conditions=@citadel/source", "--import", import.meta.resolve("tsx"), "--input-type=module", "-e", program],
      {
        cwd: tmpdir(),
        env: { ...process.env, REDIS_URL: inject("redisUrl"), J: k("spawned-jobs"), B: k("spawned-bytes"), M: marker },
      },
    );
    expect(JSON.parse(stdout)).toEqual({ released: true });
    expect(await redis.exists(marker)).toBe(0);
  });
});
