import { randomBytes } from "node:crypto";
import type { WebhookEvent } from "@citadel/contracts";
import { keys, WEBHOOK_QUEUE } from "@citadel/queue";
import { createLogger } from "@citadel/telemetry";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from "vitest";
import type { DeliveryJob, Notification } from "./record.js";
import { NotificationRelay, RELAY_GROUP } from "./relay.js";
import { messageId } from "./sign.js";

// The relay against the real Redis the run shares, under this file's own prefix.

const prefix = `{relay-${randomBytes(4).toString("hex")}}`;
const stream = keys.notifications(prefix);
let redis: Redis;
let queue: Queue<DeliveryJob>;
const relays: NotificationRelay[] = [];
const log = createLogger({ name: "relay-test", level: "silent" });

beforeAll(() => {
  redis = new Redis(inject("redisUrl"));
  queue = new Queue<DeliveryJob>(WEBHOOK_QUEUE, { connection: new Redis(inject("redisUrl")), prefix });
});
afterEach(async () => {
  await Promise.all(relays.splice(0).map((r) => r.close()));
});
afterAll(async () => {
  await queue.close();
  let cursor = "0";
  do {
    const [next, found] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000);
    cursor = next;
    if (found.length) await redis.del(...found);
  } while (cursor !== "0");
  await redis.quit();
});

/** A notification entry as the settle scripts write it. */
const entry = (id: string, type = "job.completed") =>
  redis.xadd(stream, "*", "k", "job", "id", id, "t", "acme", "e", type, "u", "", "f", "1700000000000");

const describeAs =
  (fail: Set<string> = new Set()) =>
  async (n: Notification): Promise<WebhookEvent> => {
    if (fail.has(n.id)) throw new Error("Redis trouble");
    return {
      type: n.type,
      timestamp: new Date(n.at).toISOString(),
      data: { object: "job", id: n.id, status: "completed", model: "m" },
    };
  };

function relay(consumer: string, describe = describeAs()): NotificationRelay {
  const r = new NotificationRelay(
    { redis, blocking: new Redis(inject("redisUrl"), { maxRetriesPerRequest: null }), queue, describe, log },
    {
      prefix,
      consumer,
      attempts: 3,
      backoffMs: 100,
      keepCompletedMs: 60_000,
      keepFailedMs: 60_000,
      blockMs: 100,
      claimIdleMs: 300,
    },
  );
  relays.push(r);
  r.start();
  return r;
}

async function until<T>(what: string, probe: () => Promise<T | undefined | false>): Promise<T> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe("NotificationRelay", () => {
  it("hands each entry to the delivery queue once, by message id, then deletes it; a repeated entry makes no second job", async () => {
    relay("a");
    await entry("m.one");
    await entry("m.one");
    await entry("m.two", "job.failed");
    const one = messageId("job", "m.one", "job.completed");
    const two = messageId("job", "m.two", "job.failed");
    await until("both jobs", async () => (await queue.getJob(one)) && (await queue.getJob(two)));
    await until("the stream to be emptied", async () => (await redis.xlen(stream)) === 0);
    const jobs = await queue.getJobs(["waiting", "prioritized", "delayed"]);
    expect(jobs.filter((j) => j.data.msgId === one)).toHaveLength(1);
    const job = await queue.getJob(one);
    expect(job?.data).toMatchObject({ tenant: "acme", type: "job.completed", msgId: one });
    expect(job?.opts.attempts).toBe(3);
    expect(JSON.parse(job?.data.body ?? "{}")).toMatchObject({ type: "job.completed", data: { id: "m.one" } });
  });

  it("takes over what a reader left pending when it died, once that has been idle long enough", async () => {
    // A reader that took an entry and died before handing it off.
    await redis.xgroup("CREATE", stream, RELAY_GROUP, "$", "MKSTREAM").catch(() => undefined);
    await entry("m.orphan");
    const taken = await redis.xreadgroup("GROUP", RELAY_GROUP, "dead", "COUNT", 10, "STREAMS", stream, ">");
    expect(taken).toHaveLength(1);
    relay("b");
    const id = messageId("job", "m.orphan", "job.completed");
    await until("the orphan's delivery job", () => queue.getJob(id));
    await until("the stream to be emptied", async () => (await redis.xlen(stream)) === 0);
    const pending = (await redis.xpending(stream, RELAY_GROUP)) as [number, ...unknown[]];
    expect(pending[0]).toBe(0);
  });

  it("keeps an entry whose subject cannot be read now, and hands it off once it can", async () => {
    const failing = new Set(["m.later"]);
    relay("c", describeAs(failing));
    await entry("m.later");
    await until("the entry to be read and left pending", async () => {
      const p = (await redis.xpending(stream, RELAY_GROUP)) as [number, ...unknown[]];
      return p[0] === 1;
    });
    expect(await queue.getJob(messageId("job", "m.later", "job.completed"))).toBeUndefined();
    failing.clear();
    await until("its delivery job", () => queue.getJob(messageId("job", "m.later", "job.completed")));
    await until("the stream to be emptied", async () => (await redis.xlen(stream)) === 0);
  });

  it("leaves the group when it closes with nothing pending", async () => {
    const r = relay("leaving");
    await entry("m.bye");
    await until("the stream to be emptied", async () => (await redis.xlen(stream)) === 0);
    await r.close();
    const consumers = (await redis.xinfo("CONSUMERS", stream, RELAY_GROUP)) as unknown[][];
    expect(consumers.map((c) => c[1])).not.toContain("leaving");
  });
});
