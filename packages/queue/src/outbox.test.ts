import { randomBytes } from "node:crypto";
import type { JobData } from "@citadel/contracts";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it, vi } from "vitest";
import { deploymentKeyPattern, keys } from "./names.js";
import { OUTBOX_GROUP, OutboxRelay } from "./outbox.js";
import { scripts } from "./scripts/index.js";
import { settleFinalCall } from "./settle-calls.js";

// The outbox relay against the real Redis the run shares, under this file's own prefix.

const prefix = `{outbox-${randomBytes(4).toString("hex")}}`;
const model = "m";
let redis: Redis;
const warnings: string[] = [];
const log = { warn: (obj: object, msg: string) => warnings.push(`${msg} ${JSON.stringify(obj)}`) };

beforeAll(() => {
  redis = new Redis(inject("redisUrl"));
});
afterAll(async () => {
  let cursor = "0";
  do {
    const [next, found] = await redis.scan(cursor, "MATCH", deploymentKeyPattern(prefix), "COUNT", 1000);
    cursor = next;
    for (const k of found) await redis.unlink(k);
  } while (cursor !== "0");
  await redis.quit();
});

function relay(consumer: string, claimIdleMs = 10_000): OutboxRelay {
  const r = new OutboxRelay(redis, { prefix, consumer, claimIdleMs, idleMaxMs: 5 }, log);
  r.setModels([model]);
  return r;
}

async function until(what: string, probe: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (await probe()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const outboxEmpty = async () => (await redis.xlen(keys.outbox(prefix, model))) === 0;

/** A job of `tenant` reserved as the API reserves it, finished (its hash final), then settled as a worker settles it. */
async function settledJob(tenant: string, data: Partial<JobData> = {}, bytes = 4): Promise<string> {
  const id = `${model}.${randomBytes(12).toString("hex")}`;
  await redis
    .multi()
    .set(keys.quotaHeld(prefix, tenant, id), String(bytes))
    .incr(keys.tenantQueuedJobs(prefix, tenant))
    .incrby(keys.tenantQueuedBytes(prefix, tenant), bytes)
    .exec();
  await redis.hset(keys.job(prefix, model, id), { finishedOn: 1700000000000, returnvalue: '{"outputs":{}}' });
  await settleAgain(id, { tenant, ...data });
  return id;
}

async function settleAgain(id: string, data: Partial<JobData>): Promise<void> {
  const call = settleFinalCall(prefix, model, id, data as JobData);
  expect(await scripts(redis).settleFinal(call.keys, call.args)).toBe(1);
}

const quota = async (tenant: string) =>
  redis.mget(keys.tenantQueuedJobs(prefix, tenant), keys.tenantQueuedBytes(prefix, tenant));

describe("OutboxRelay", () => {
  it("applies each entry once: quota share back, batch line recorded, notification added; then deletes it", async () => {
    const batchId = "batch_outbox00000000000000";
    const meta = keys.batch(prefix, "acme", batchId);
    await redis
      .multi()
      .hset(meta, { created: 1, sealed: 1, cancel: 0, accepted: 1, notify: "tenant" })
      .pexpire(meta, 60_000)
      .exec();
    const a = await settledJob("acme", { batchRef: { id: batchId, line: 1 }, customId: "c-1" });
    const b = await settledJob("acme", { notify: { url: "https://example.com/hook" } }, 8);
    // A second worker's settlement of b (it lost the lock after finishing): one more entry, nothing more released.
    await settleAgain(b, { tenant: "acme", notify: { url: "https://example.com/hook" } });
    expect(await quota("acme")).toEqual(["2", "12"]);
    const r = relay("api-1");
    r.start();
    try {
      await until("the outbox relayed", outboxEmpty);
    } finally {
      await r.close();
    }
    expect(await quota("acme")).toEqual(["0", "0"]);
    expect(await redis.hget(keys.batchResults(prefix, "acme", batchId), "1")).toBe(
      `{"j":"${a}","c":"c-1","f":1700000000000,"s":"completed","r":{"outputs":{}}}`,
    );
    expect(await redis.hget(meta, "completed")).toBe("1");
    const notes = (await redis.xrange(keys.notifications(prefix), "-", "+")).map(([, f]) => f);
    // The batch's completion (its one line recorded) and b's two: the notifier's delivery id makes those one delivery.
    const jobNote = [
      "k",
      "job",
      "id",
      b,
      "t",
      "acme",
      "e",
      "job.completed",
      "u",
      "https://example.com/hook",
      "f",
      "1700000000000",
    ];
    expect(notes).toHaveLength(3);
    expect(notes.filter((f) => JSON.stringify(f) === JSON.stringify(jobNote))).toHaveLength(2);
    expect(notes).toContainEqual(expect.arrayContaining(["k", "batch", "id", batchId, "e", "batch.completed"]));
    expect(warnings).toEqual([]);
  });

  it("keeps an entry whose effects fail, and applies it once they can be", async () => {
    // The job's reservation marker is of the wrong type: releasing its share fails (before
    // any write) until it is repaired.
    const id = await settledJob("broken");
    const marker = keys.quotaHeld(prefix, "broken", id);
    await redis.multi().del(marker).hset(marker, "x", "1").exec();
    const r = relay("api-2");
    r.start();
    try {
      await until("a warning", async () => warnings.some((w) => w.includes("could not apply")));
      expect(await redis.xlen(keys.outbox(prefix, model))).toBe(1);
      await redis.multi().del(marker).set(marker, "4").exec();
      await until("the outbox relayed", outboxEmpty);
    } finally {
      await r.close();
    }
    expect(await quota("broken")).toEqual(["0", "0"]);
    warnings.length = 0;
  });

  it("reads a followed model's outbox when nudged, not by polling; other models' outboxes are still polled", async () => {
    const other = "m2";
    const otherJob = async (tenant: string) => {
      const id = `${other}.${randomBytes(12).toString("hex")}`;
      await redis
        .multi()
        .set(keys.quotaHeld(prefix, tenant, id), "4")
        .incr(keys.tenantQueuedJobs(prefix, tenant))
        .incrby(keys.tenantQueuedBytes(prefix, tenant), 4)
        .exec();
      await redis.hset(keys.job(prefix, other, id), { finishedOn: 1700000000000, returnvalue: '{"outputs":{}}' });
      const call = settleFinalCall(prefix, other, id, { tenant } as JobData);
      expect(await scripts(redis).settleFinal(call.keys, call.args)).toBe(1);
    };
    const reads = vi.spyOn(redis, "xreadgroup");
    // A safety read only every minute: within this test a followed outbox is read on its first round and when nudged.
    const r = new OutboxRelay(
      redis,
      { prefix, consumer: "api-follow", claimIdleMs: 10_000, idleMaxMs: 60_000, followed: (m) => m === model },
      log,
    );
    r.setModels([model, other]);
    try {
      await settledJob("followed");
      r.start();
      await until("the first round", outboxEmpty);
      await settledJob("followed");
      // The other model's outbox is polled (its pause doubles up to idleMaxMs: give it one round).
      await otherJob("polled");
      await until("the polled outbox relayed", async () => (await redis.xlen(keys.outbox(prefix, other))) === 0);
      const followedReads = () => reads.mock.calls.filter((c) => c.includes(keys.outbox(prefix, model))).length;
      const before = followedReads();
      await new Promise((res) => setTimeout(res, 300));
      expect(await redis.xlen(keys.outbox(prefix, model))).toBe(1);
      expect(followedReads()).toBe(before);
      r.nudge(model);
      await until("the nudged outbox relayed", outboxEmpty);
      expect(await quota("followed")).toEqual(["0", "0"]);
      expect(await quota("polled")).toEqual(["0", "0"]);
    } finally {
      reads.mockRestore();
      await r.close();
    }
  });

  it("takes over the entries of a reader that died before finishing them", async () => {
    const stream = keys.outbox(prefix, model);
    await redis.xgroup("CREATE", stream, OUTBOX_GROUP, "0", "MKSTREAM").catch(() => undefined);
    await settledJob("orphan");
    // A reader that took the entry and died: it stays pending under that reader's name.
    const taken = await redis.xreadgroup("GROUP", OUTBOX_GROUP, "api-dead", "COUNT", 10, "STREAMS", stream, ">");
    expect(taken).toHaveLength(1);
    const r = relay("api-3", 200);
    r.start();
    try {
      await until("the orphaned entry relayed", outboxEmpty);
    } finally {
      await r.close();
    }
    expect(await quota("orphan")).toEqual(["0", "0"]);
    expect(await redis.xpending(stream, OUTBOX_GROUP)).toEqual([0, null, null, null]);
    // Readers that closed with nothing pending left the group; the dead one is still listed.
    const consumers = (await redis.xinfo("CONSUMERS", stream, OUTBOX_GROUP)) as unknown[][];
    expect(consumers.map((c) => c[1])).toEqual(["api-dead"]);
  });

  it("drops an entry that is not an outbox entry, with a warning", async () => {
    await redis.xadd(keys.outbox(prefix, model), "*", "junk", "1");
    const r = relay("api-4");
    r.start();
    try {
      await until("the junk dropped", outboxEmpty);
    } finally {
      await r.close();
    }
    expect(warnings.join("\n")).toMatch(/not an outbox entry/);
  });

  it("gives a read's quota shares back in one call per tenant, each share once", async () => {
    warnings.length = 0;
    const ids = [await settledJob("t-one", {}, 3), await settledJob("t-one", {}, 5), await settledJob("t-two", {}, 7)];
    // One of t-one's jobs was released already (a cancel raced the settlement): not again.
    const cancelled = ids[1] as string;
    await scripts(redis).quotaRelease(
      keys.tenantQueuedJobs(prefix, "t-one"),
      keys.tenantQueuedBytes(prefix, "t-one"),
      keys.quotaHeld(prefix, "t-one", cancelled),
    );
    expect(await quota("t-one")).toEqual(["1", "3"]);
    const calls = vi.spyOn(scripts(redis), "quotaReleaseMany");
    const r = relay("api-5");
    r.start();
    let sizes: number[] = [];
    try {
      await until("the outbox relayed", outboxEmpty);
      sizes = calls.mock.calls.map((c) => c[2].length).sort();
    } finally {
      await r.close();
      calls.mockRestore();
    }
    expect(await quota("t-one")).toEqual(["0", "0"]);
    expect(await quota("t-two")).toEqual(["0", "0"]);
    // The three entries came in one read: one call per tenant, none per entry.
    expect(sizes).toEqual([1, 2]);
    expect(warnings).toEqual([]);
  });

  it("drops a pending reference whose entry was deleted but never acknowledged (an XACK lost after its XDEL)", async () => {
    const stream = keys.outbox(prefix, model);
    await redis.xgroup("CREATE", stream, OUTBOX_GROUP, "0", "MKSTREAM").catch(() => undefined);
    await settledJob("half");
    const taken = (await redis.xreadgroup("GROUP", OUTBOX_GROUP, "api-6", "COUNT", 10, "STREAMS", stream, ">")) as [
      string,
      [string, string[]][],
    ][];
    const id = taken[0]?.[1][0]?.[0] as string;
    await redis.xdel(stream, id);
    expect((await redis.xpending(stream, OUTBOX_GROUP))[0]).toBe(1);
    const r = relay("api-6", 100);
    r.start();
    try {
      await until("the reference dropped", async () => (await redis.xpending(stream, OUTBOX_GROUP))[0] === 0);
    } finally {
      await r.close();
    }
  });
});
