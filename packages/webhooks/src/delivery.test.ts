import { randomBytes } from "node:crypto";
import { WEBHOOK_QUEUE } from "@citadel/queue";
import { counter, createLogger, createRegistry } from "@citadel/telemetry";
import type { Tenant } from "@citadel/tenants";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { WebhookDelivery } from "./delivery.js";
import { WebhookKey } from "./key.js";
import type { postJson } from "./post.js";
import type { DeliveryJob } from "./record.js";
import { TargetGuard } from "./target.js";

// The delivery worker against the real Redis the run shares, under this file's own
// prefix; the POST is the test's own (a receiver per tenant), the rest is real.

const prefix = `{delivery-${randomBytes(4).toString("hex")}}`;
let redis: Redis;
let queue: Queue<DeliveryJob>;
beforeAll(() => {
  redis = new Redis(inject("redisUrl"));
  queue = new Queue<DeliveryJob>(WEBHOOK_QUEUE, { connection: new Redis(inject("redisUrl")), prefix });
});
afterAll(async () => {
  await queue.obliterate({ force: true });
  await queue.close();
  await redis.quit();
});

const tenant = (id: string): Tenant =>
  ({ id, callbackUrl: `https://${id}.example/hook`, webhookSecret: { generation: 1 } }) as unknown as Tenant;
const job = (t: string, n: number): { name: string; data: DeliveryJob } => ({
  name: "deliver",
  data: { tenant: t, type: "job.completed", msgId: `msg_${t}_${n}`, body: "{}" },
});

describe("webhook delivery", () => {
  it("gives each tenant a share of the slots: one whose receiver never answers cannot hold back another's", async () => {
    // Tenant "slow" has 20 notifications queued first, to a receiver that hangs until the
    // end of the test; "quick"'s one notification comes after them. 4 slots, 2 per tenant.
    let release = () => {};
    const hung = new Promise<void>((r) => {
      release = r;
    });
    const posted: string[] = [];
    const post: typeof postJson = async (target) => {
      posted.push(target.url.host);
      if (target.url.host.startsWith("slow.")) await hung;
      return { status: 200 };
    };
    const registry = createRegistry("delivery-test");
    const deliveries = counter(registry, "deliveries", "test", ["tenant", "outcome"]);
    await queue.addBulk([...Array.from({ length: 20 }, (_, n) => job("slow", n)), job("quick", 0)]);
    const delivery = new WebhookDelivery(
      {
        connection: new Redis(inject("redisUrl"), { maxRetriesPerRequest: null }),
        prefix,
        tenants: { get: async (id) => tenant(id) },
        key: new WebhookKey(randomBytes(32)),
        guard: new TargetGuard([], { resolve: async () => [{ address: "93.184.215.14", family: 4 }] }),
        log: createLogger({ name: "delivery-test", level: "silent" }),
        deliveries,
        post,
      },
      { concurrency: 4, perTenant: 2, timeoutMs: 60_000, maxResponseBytes: 1024 },
    );
    try {
      const until = Date.now() + 20_000;
      while (!posted.includes("quick.example") && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      expect(posted).toContain("quick.example");
      // The slow tenant never held more than its share.
      expect(posted.filter((h) => h.startsWith("slow.")).length).toBe(2);
      const outcomes = (await registry.getSingleMetric("deliveries")?.get())?.values ?? [];
      const deferred = outcomes.find((v) => v.labels.tenant === "slow" && v.labels.outcome === "deferred");
      expect(deferred?.value ?? 0).toBeGreaterThan(0);
    } finally {
      release();
      await delivery.close();
    }
    // Deferred, not failed: no attempt was spent on a delivery that waited for its share.
    const waiting = await queue.getJobs(["delayed", "wait"]);
    expect(waiting.length).toBeGreaterThan(0);
    for (const j of waiting) expect(j.attemptsMade, j.id).toBe(0);
  });
});
