import { createHash } from "node:crypto";
import { type AuditKey, AuditWriter } from "@citadel/audit";
import { type JobData, JobRequest } from "@citadel/contracts";
import { buildIdentityModel } from "@citadel/onnx";
import {
  bullConnection,
  type EnqueueItem,
  JobQueues,
  keys,
  modelOfJobId,
  queueName,
  queuePrefix,
  type RedisConn,
  redisClient,
  scripts,
  settleFinalCall,
} from "@citadel/queue";
import { ModelRegistry } from "@citadel/registry";
import { DenialAggregator, ModelCatalog, RateLimiter, Submitter } from "@citadel/submit";
import { createLogger, createRegistry } from "@citadel/telemetry";
import { TenantStore } from "@citadel/tenants";
import { Queue } from "bullmq";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { apiMetrics } from "../../apps/api/src/metrics.js";
import { pollUntil, publishModel, queueCounts, readAudit } from "../support/api-kit.js";
import { LogCapture, startTestFleet, type TestFleet } from "../support/fleet.js";

// Issue 10 point 7: replaying an Idempotency-Key answers with the first job's state and
// never runs its work again; quota counters never fall below what is really queued;
// and a crash or a lost reply between claim and enqueue still yields exactly one job.

const tiny = buildIdentityModel("float32", ["N", 4]);
const spec = {
  maxBatch: 8,
  maxQueueDelayMs: 2,
  timeoutMs: 4000,
  inputs: { x: { range: [-10, 10] as [number, number] } },
};
const MODELS = ["idem-cancel", "idem-quota", "idem-done", "idem-fault", "idem-lost"] as const;
const job = (model: string, v = 0.5) => ({
  model,
  inputs: { x: { dtype: "float32", shape: [1, 4], data: [v, v, v, v] } },
});
const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

let fleet: TestFleet;

beforeAll(async () => {
  fleet = await startTestFleet({ workers: 0 });
  for (const name of MODELS) await publishModel(fleet, tiny, { name, version: "1", spec });
});
afterAll(async () => {
  await fleet?.close();
});

/** Removes a job from BullMQ as retention, a failover's lost writes or an operator would: no outbox entry. */
async function removeJob(model: string, id: string): Promise<void> {
  const q = new Queue(queueName(model), { connection: fleet.redis, prefix: queuePrefix(fleet.prefix, model) });
  try {
    await q.remove(id);
  } finally {
    await q.close();
  }
}

/** The tenant's queued-jobs counter, as the API's quota check reads it. */
async function quota(tenant: string): Promise<number> {
  return Number((await fleet.redis.get(keys.tenantQueuedJobs(fleet.prefix, tenant))) ?? 0);
}

/** Jobs of a model that are really queued or running (each test's model has one tenant). */
async function live(model: string): Promise<number> {
  const c = await queueCounts(fleet, model);
  return c.waiting + c.prioritized + c.delayed + c.active;
}

async function acceptedRecords(id: string): Promise<number> {
  return (await readAudit(fleet)).filter((r) => r.event === "job.accepted" && r.jobId === id).length;
}

describe("Idempotency-Key replays", () => {
  it("answer a cancelled job as cancelled and never queue it again", async () => {
    const key = await fleet.addTenant({ id: "idem-c", models: ["*"] });
    const h = { ...bearer(key), "idempotency-key": "cancel-me" };
    const first = await fleet.request("POST", "/v1/jobs", job("idem-cancel"), h);
    expect(first.status).toBe(202);
    const id = first.json.id as string;
    const del = await fleet.request("DELETE", `/v1/jobs/${id}`, undefined, bearer(key));
    expect(del.json.status).toBe("cancelled");
    for (let i = 0; i < 3; i++) {
      const again = await fleet.request("POST", "/v1/jobs", job("idem-cancel"), h);
      expect([again.status, again.json]).toEqual([
        202,
        { id, status: "cancelled", model: "idem-cancel", version: "1" },
      ]);
    }
    expect((await queueCounts(fleet, "idem-cancel")).total).toBe(0);
    // The cancel gives the share back before it answers (the outbox relay would, a moment later).
    expect(await quota("idem-c")).toBe(0);
    expect(await acceptedRecords(id)).toBe(1);
    // A bulk replay answers the same way, item by item.
    const b = { ...bearer(key), "idempotency-key": "bulk-cancel" };
    const bulk = await fleet.request(
      "POST",
      "/v1/jobs/bulk",
      { jobs: [job("idem-cancel", 1), job("idem-cancel", 2)] },
      b,
    );
    const [x, y] = bulk.json.jobs as { id: string }[];
    await fleet.request("DELETE", `/v1/jobs/${x?.id}`, undefined, bearer(key));
    const replay = await fleet.request(
      "POST",
      "/v1/jobs/bulk",
      { jobs: [job("idem-cancel", 1), job("idem-cancel", 2)] },
      b,
    );
    expect(replay.json.jobs.map((j: { id: string; status: string }) => [j.id, j.status])).toEqual([
      [x?.id, "cancelled"],
      [y?.id, "queued"],
    ]);
    expect((await queueCounts(fleet, "idem-cancel")).total).toBe(1);
    expect(await quota("idem-c")).toBe(1);
  });

  it("never drive the tenant's quota counter below what is really queued", async () => {
    const key = await fleet.addTenant({ id: "idem-q", models: ["*"], maxQueuedJobs: 3 });
    const check = async (what: string) => {
      const [q, n] = [await quota("idem-q"), await live("idem-quota")];
      expect(q, `${what}: counter ${q}, queued ${n}`).toBe(n);
      expect(n, what).toBeLessThanOrEqual(3);
    };
    const a = await fleet.request("POST", "/v1/jobs", job("idem-quota", 1), {
      ...bearer(key),
      "idempotency-key": "qa",
    });
    const b = await fleet.request("POST", "/v1/jobs", job("idem-quota", 2), {
      ...bearer(key),
      "idempotency-key": "qb",
    });
    expect([a.status, b.status]).toEqual([202, 202]);
    await check("two queued");
    await fleet.request("DELETE", `/v1/jobs/${a.json.id}`, undefined, bearer(key));
    await check("one cancelled");
    for (let i = 0; i < 3; i++) {
      await fleet.request("POST", "/v1/jobs", job("idem-quota", 1), { ...bearer(key), "idempotency-key": "qa" });
      await fleet.request("POST", "/v1/jobs", job("idem-quota", 2), { ...bearer(key), "idempotency-key": "qb" });
    }
    await check("after replays");
    const answers = [];
    for (let i = 0; i < 4; i++)
      answers.push((await fleet.request("POST", "/v1/jobs", job("idem-quota", 3 + i), bearer(key))).status);
    // Two more fit under the cap of 3; the rest are refused.
    expect(answers).toEqual([202, 202, 429, 429]);
    await check("at the cap");
  });

  it("answer a completed job as completed; once it is gone, 409 and no second run", async () => {
    const key = await fleet.addTenant({ id: "idem-d", models: ["*"] });
    const h = { ...bearer(key), "idempotency-key": "run-once" };
    await fleet.startWorker();
    const first = await fleet.request("POST", "/v1/jobs", job("idem-done"), h);
    expect(first.status).toBe(202);
    const id = first.json.id as string;
    const done = await fleet.request("GET", `/v1/jobs/${id}?wait=30000`, undefined, bearer(key));
    expect(done.json.status).toBe("completed");
    const again = await fleet.request("POST", "/v1/jobs", job("idem-done"), h);
    expect([again.status, again.json]).toEqual([202, { id, status: "completed", model: "idem-done", version: "1" }]);
    expect((await queueCounts(fleet, "idem-done")).total).toBe(1);
    // Its outcome relayed (its reservation released: hours before retention removes it) ...
    await pollUntil("the completion relayed", async () => (await quota("idem-d")) === 0);
    // ... the result expires (simulated: the job is removed from BullMQ as its retention would).
    await removeJob("idem-done", id);
    // ... as it would once its retention passed: the key's entry is older than any retention.
    const entry = keys.idempotency(fleet.prefix, "idem-d", createHash("sha256").update("run-once").digest("hex"));
    expect(await fleet.redis.hset(entry, "at", 1)).toBe(0);
    const gone = await fleet.request("POST", "/v1/jobs", job("idem-done"), h);
    expect([gone.status, gone.json.error?.code]).toEqual([409, "IDEMPOTENCY_EXPIRED"]);
    expect(gone.json.error.message).toMatch(/no longer exists/);
    expect((await queueCounts(fleet, "idem-done")).total).toBe(0);
    expect(await quota("idem-d")).toBe(0);
    const completed = (await readAudit(fleet)).filter((r) => r.event === "job.completed" && r.jobId === id);
    expect(completed).toHaveLength(1);
  });

  it("enqueue a job again, once, under its id when it vanished before it ever ended (a failover lost it)", async () => {
    const key = await fleet.addTenant({ id: "idem-lost", models: ["*"] });
    await Promise.all(fleet.workers.splice(0).map((w) => w.close()));
    const h = { ...bearer(key), "idempotency-key": "lost-in-failover" };
    const first = await fleet.request("POST", "/v1/jobs", job("idem-lost"), h);
    expect(first.status).toBe(202);
    const id = first.json.id as string;
    expect(await quota("idem-lost")).toBe(1);
    // A master that failed over before replicating the job loses its hash and queue entry;
    // the tenant's keys (another slot, another master) keep the confirmed entry and the reservation.
    await removeJob("idem-lost", id);
    expect((await fleet.request("GET", `/v1/jobs/${id}`, undefined, bearer(key))).status).toBe(404);
    const retries = await Promise.all([0, 1, 2].map(() => fleet.request("POST", "/v1/jobs", job("idem-lost"), h)));
    for (const r of retries) expect([r.status, r.json.id], JSON.stringify(r.json)).toEqual([202, id]);
    expect((await queueCounts(fleet, "idem-lost")).queued).toBe(1);
    // Still one reservation: the job kept the one it had.
    expect(await quota("idem-lost")).toBe(1);
    await fleet.startWorker();
    const done = await fleet.request("GET", `/v1/jobs/${id}?wait=30000`, undefined, bearer(key));
    expect(done.json.status).toBe("completed");
    await pollUntil("the completion relayed", async () => (await quota("idem-lost")) === 0);
    const completions = async () =>
      (await readAudit(fleet)).filter((r) => r.event === "job.completed" && r.jobId === id).length;
    expect(await completions()).toBe(1);
    // Lost again after it ended (its outcome with a master that failed over; its share was
    // given back): a retry runs it again and reserves again; it is given back again after.
    await removeJob("idem-lost", id);
    const rerun = await fleet.request("POST", "/v1/jobs", job("idem-lost"), h);
    expect([rerun.status, rerun.json.id]).toEqual([202, id]);
    const again = await fleet.request("GET", `/v1/jobs/${id}?wait=30000`, undefined, bearer(key));
    expect(again.json.status).toBe("completed");
    await pollUntil("the second completion relayed", async () => (await quota("idem-lost")) === 0);
    expect(await completions()).toBe(2);
  });
});

type Fault = "none" | "refused" | "lost-reply" | "hang";

/** The real queues with one injected fault on the next enqueue. */
class FaultyQueues extends JobQueues {
  fault: Fault = "none";
  override async enqueueMany(model: string, items: EnqueueItem[]) {
    const f = this.fault;
    this.fault = "none";
    if (f === "refused") throw new Error("read ECONNRESET (injected before the write)");
    if (f === "hang") return new Promise<void>(() => undefined);
    await super.enqueueMany(model, items);
    if (f === "lost-reply") throw new Error("read ECONNRESET (injected after the write)");
  }
}

describe("a job's share of the quota", () => {
  it("is given back once, whoever settles the job (a cancel racing a worker cannot release it twice)", async () => {
    const key = await fleet.addTenant({ id: "idem-once", models: ["*"] });
    // No worker: the jobs stay queued, and the test plays the worker's part.
    await Promise.all(fleet.workers.splice(0).map((w) => w.close()));
    const ids: string[] = [];
    for (const v of [0.1, 0.2, 0.3]) {
      const r = await fleet.request("POST", "/v1/jobs", job("idem-quota", v), bearer(key));
      expect(r.status).toBe(202);
      ids.push(r.json.id);
    }
    expect(await quota("idem-once")).toBe(3);
    const [first, second] = ids as [string, string];
    /** What a worker's settlement leaves in the job's queue's outbox (with the cancel's outcome: the hash is gone). */
    const settleAgain = async (id: string) => {
      const data = { tenant: "idem-once" } as JobData;
      const call = settleFinalCall(fleet.prefix, modelOfJobId(id), id, data, { status: "cancelled", finishedAt: 1 });
      expect(await scripts(fleet.redis).settleFinal(call.keys, call.args)).toBe(1);
    };
    const outboxEmpty = async () => (await fleet.redis.xlen(keys.outbox(fleet.prefix, "idem-quota"))) === 0;
    // The API cancels the first job (its outbox entry releases its share) ...
    expect((await fleet.request("DELETE", `/v1/jobs/${first}`, undefined, bearer(key))).json.status).toBe("cancelled");
    await pollUntil("the cancel relayed", async () => (await quota("idem-once")) === 2 && (await outboxEmpty()));
    // ... and a worker that had also settled it adds a second entry: relayed, nothing moves.
    await settleAgain(first);
    await pollUntil("the repeat relayed", outboxEmpty);
    expect(await quota("idem-once")).toBe(2);
    // The second job's share goes back once, however often its outcome is relayed.
    await settleAgain(second);
    await settleAgain(second);
    await pollUntil("the second job relayed", outboxEmpty);
    expect(await quota("idem-once")).toBe(1);
    expect(Number(await fleet.redis.get(keys.tenantQueuedBytes(fleet.prefix, "idem-once")))).toBe(16);
  });
});

describe("a fault between claim and enqueue", () => {
  const clients: RedisConn[] = [];
  const closers: (() => Promise<void>)[] = [];

  /** A Submitter as startApi composes it, over the fleet's Redis, with its own queues. */
  async function submitter(enqueueTimeoutMs: number): Promise<{ s: Submitter; queues: FaultyQueues }> {
    const url = fleet.env.REDIS_URL ?? "";
    const redis = redisClient(url, () => undefined);
    const conn = redisClient(url, () => undefined, { enableAutoPipelining: false });
    clients.push(redis, conn);
    const settings = {
      prefix: fleet.prefix,
      resultTtlMs: 3_600_000,
      failedTtlMs: 3_600_000,
      attempts: 1,
      backoffMs: 100,
    };
    const trusted = await (await fleet.ctx.keys()).publicKeys();
    const log = createLogger({ name: "test-submitter", destination: new LogCapture() });
    const catalog = new ModelCatalog(new ModelRegistry(redis, fleet.prefix), () => trusted, log);
    await catalog.refresh();
    const queues = new FaultyQueues(
      conn,
      () => bullConnection(url, () => undefined),
      redis,
      settings,
      (m) => catalog.models().includes(m),
    );
    const audit = new AuditWriter(redis, fleet.prefix, "test-submitter", log, fleet.auditKeys[0] as AuditKey);
    const denials = new DenialAggregator(audit, { windowMs: 10_000, maxSources: 100 });
    closers.push(async () => {
      denials.close();
      await queues.close();
      await audit.close();
    });
    const deps = {
      redis,
      queues,
      catalog,
      limiter: new RateLimiter(redis, fleet.prefix),
      audit,
      denials,
      metrics: apiMetrics(createRegistry("t", false)),
      log,
    };
    const s = new Submitter(deps, {
      prefix: fleet.prefix,
      queueTtlMs: 60_000,
      maxQueueDepth: 10_000,
      maxTenantQueuedBytes: 1 << 30,
      idempotencyTtlMs: 86_400_000,
      enqueueTimeoutMs,
      minJobTimeoutMs: 100,
      retentionMs: 3_600_000,
    });
    return { s, queues };
  }

  beforeAll(async () => {
    // No worker may take these jobs: they must stay countable.
    await Promise.all(fleet.workers.splice(0).map((w) => w.close()));
    await fleet.addTenant({ id: "idem-f", models: ["*"] });
  });
  afterAll(async () => {
    for (const c of closers) await c();
    for (const c of clients) await c.quit();
  });

  const tenantOf = async () => {
    const t = await new TenantStore(fleet.redis, fleet.prefix).get("idem-f");
    if (!t) throw new Error("no tenant");
    return t;
  };
  const ctx = async (k: string) => ({
    tenant: await tenantOf(),
    requestId: `r-${k}`,
    clientIp: "127.0.0.1",
    idempotencyKey: k,
  });
  const req = (v: number) => JobRequest.parse(job("idem-fault", v));
  const balanced = async (what: string) => {
    await pollUntil(
      `${what}: counter equals queued jobs`,
      async () => (await quota("idem-f")) === (await live("idem-fault")),
    );
  };

  it("a lost reply: the job landed; the 503's retry gets it, the quota counts it once", async () => {
    const { s, queues } = await submitter(10_000);
    const before = await live("idem-fault");
    queues.fault = "lost-reply";
    await expect(s.submitOne(req(1), await ctx("lost"))).rejects.toMatchObject({ code: "QUEUE_UNAVAILABLE" });
    const again = await s.submitOne(req(1), await ctx("lost"));
    expect(again.status).toBe("queued");
    expect(await live("idem-fault")).toBe(before + 1);
    await balanced("lost reply");
    await pollUntil("one job.accepted record", async () => (await acceptedRecords(again.id)) === 1);
  });

  it("a refused write: nothing landed; the reservation is given back and a retry queues one job", async () => {
    const { s, queues } = await submitter(10_000);
    const before = await live("idem-fault");
    queues.fault = "refused";
    await expect(s.submitOne(req(2), await ctx("refused"))).rejects.toMatchObject({ code: "QUEUE_UNAVAILABLE" });
    await balanced("refused");
    const again = await s.submitOne(req(2), await ctx("refused"));
    expect(await live("idem-fault")).toBe(before + 1);
    await balanced("refused, then retried");
    expect(await acceptedRecords(again.id)).toBe(1);
  });

  it("a crash mid-enqueue: another API instance queues the job on retry, once, with its reservation", async () => {
    const crashed = await submitter(300);
    const before = await live("idem-fault");
    crashed.queues.fault = "hang";
    await expect(crashed.s.submitOne(req(3), await ctx("crash"))).rejects.toMatchObject({ code: "QUEUE_UNAVAILABLE" });
    const restarted = await submitter(10_000);
    const again = await restarted.s.submitOne(req(3), await ctx("crash"));
    const twice = await restarted.s.submitOne(req(3), await ctx("crash"));
    expect([again.status, twice.id]).toEqual(["queued", again.id]);
    expect(await live("idem-fault")).toBe(before + 1);
    await balanced("crash");
    await pollUntil("one job.accepted record", async () => (await acceptedRecords(again.id)) === 1);
  });
});
