import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import {
  AuditKey,
  AuditWriter,
  auditStreamKey,
  auditWritersKey,
  formatLease,
  pruneExpiredWriters,
  verifyAuditStream,
} from "@citadel/audit";
import type { JobData } from "@citadel/contracts";
import { keys, OutboxRelay, queueName, queuePrefix, scripts, settleFinalCall } from "@citadel/queue";
import { bucketKey, RateLimiter } from "@citadel/submit";
import { TenantStore } from "@citadel/tenants";
import { Queue, Worker } from "bullmq";
import { Redis, type RedisOptions } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Layout, runBootstrap } from "./compose-secrets.js";
import {
  composeRedisPasswords,
  operatorObjects,
  PREFIX,
  startComposeRedis,
  startK8sRedis,
  type TestRedis,
  tempDir,
} from "./deployments.js";
import { arr, at, configMapData, named, RENDERER, read, renderOverlay, str } from "./support.js";

/**
 * Least-privilege Redis: each deployment's ACL file, built the way that deployment
 * builds it from infra/redis/acl-rules.conf (compose: gen-secrets.mjs; Kubernetes: the
 * citadel-redis init container, run as rendered), loaded into a real redis-server. Each
 * role then does its own work with the real clients (BullMQ, the tenant store) and is
 * refused outside its rights.
 */

const KEDA_SCRIPT = `
		local listName = KEYS[1]
		local listType = redis.call('type', listName).ok
		local cmd = {
			zset = 'zcard',
			set = 'scard',
			list = 'llen',
			hash = 'hlen',
			none = 'llen'
		}

		return redis.call(cmd[listType], listName)
	`; // KEDA's redis scaler (pkg/scalers/redis_scaler.go), verbatim

const NOPERM = /NOPERM/;

interface Deployment {
  redis: TestRedis;
  passwords: Record<string, string>;
  close(): Promise<void>;
}

async function composeDeployment(): Promise<Deployment> {
  const layout: Layout = runBootstrap();
  const redis = await startComposeRedis(layout);
  return {
    redis,
    passwords: composeRedisPasswords(layout),
    close: async () => {
      await redis.stop();
      rmSync(layout.dir, { recursive: true, force: true });
    },
  };
}

async function k8sDeployment(): Promise<Deployment> {
  const { docs } = renderOverlay("base");
  const dir = tempDir("k8s-redis");
  const cluster = operatorObjects([], dir);
  const redis = await startK8sRedis(docs, cluster, dir);
  return {
    redis,
    passwords: cluster.secrets["citadel-redis-users"] ?? {},
    close: async () => {
      await redis.stop();
    },
  };
}

describe.each([
  ["docker compose", composeDeployment],
  ["Kubernetes", k8sDeployment],
] as const)("Redis ACL users (%s), against a real redis-server", (_label, start) => {
  let d: Deployment;
  const clients: Redis[] = [];
  const as = (role: string, opts: RedisOptions = {}) => {
    const c = new Redis(d.redis.url(role, d.passwords[role] ?? ""), opts);
    c.on("error", () => undefined);
    clients.push(c);
    return c;
  };
  beforeAll(async () => {
    d = await start();
  });
  afterAll(async () => {
    for (const c of clients) c.disconnect();
    await d?.close();
  });

  it("turns the password-less default user off and keeps one user per role", async () => {
    const anon = new Redis(`redis://127.0.0.1:${d.redis.port}`, { lazyConnect: true, enableReadyCheck: false });
    anon.on("error", () => undefined);
    clients.push(anon);
    await anon.connect();
    await expect(anon.get(`${PREFIX}:x`)).rejects.toThrow(/NOAUTH/);
    // One role's password does not open another role's user.
    await expect(anon.call("AUTH", "worker", d.passwords.api ?? "")).rejects.toThrow(/WRONGPASS/);
  });

  it("lets each role do its work and refuses it everything else", async () => {
    const model = `acl-${Date.now()}`;
    const wait = keys.bull(PREFIX, model, "wait");
    // publisher / CLI: tenants and the registry.
    const pub = as("publisher");
    const tenants = new TenantStore(pub, PREFIX);
    await tenants.upsert({ id: "acme", models: ["*"] });
    const apiKey = await tenants.issueKey("acme");
    await pub.hset(`${PREFIX}:registry:models`, model, "{}");
    await pub.publish(`${PREFIX}:registry:changed`, JSON.stringify({ name: model }));
    await expect(pub.set("elsewhere", "1"), "publisher outside the prefix").rejects.toThrow(NOPERM);

    // API: reads tenants and the registry, enqueues, never writes either.
    const api = as("api", { maxRetriesPerRequest: null });
    expect(await new TenantStore(api, PREFIX).authenticate(apiKey)).toMatchObject({ id: "acme" });
    expect(await api.hget(`${PREFIX}:registry:models`, model)).toBe("{}");
    await expect(api.hset(`${PREFIX}:registry:models`, model, "forged"), "API writes the registry").rejects.toThrow(
      NOPERM,
    );
    await expect(api.hset(`${PREFIX}:tenants:keys`, "h", "acme"), "API writes tenants").rejects.toThrow(NOPERM);
    // Token buckets: per IP in the IP's slot, per tenant in the tenant's; the API only.
    const limiter = new RateLimiter(api, PREFIX);
    const byIp = { scope: "ip", id: "127.0.0.1", rate: 0.001, burst: 1 };
    const byTenant = { scope: "tenant", id: "acme", rate: 0.001, burst: 5 };
    expect((await limiter.takeAll([byIp, byTenant])).allowed).toBe(true);
    expect(await limiter.takeAll([byIp, byTenant])).toMatchObject({ allowed: false, scope: "ip" });
    expect(bucketKey(PREFIX, "ip", "127.0.0.1").key).toBe("{citadel:ip:127.0.0.1}:rl:ip");
    const queue = new Queue(queueName(model), { connection: api, prefix: queuePrefix(PREFIX, model) });
    const job = await queue.add("infer", { n: 21 });

    // KEDA: the length of the wait list and of the prioritized set (low-priority jobs),
    // through its own script, and nothing more.
    // KEDA's client (go-redis) sends no INFO; its user may not run it.
    const keda = d.passwords.keda === undefined ? undefined : as("keda", { enableReadyCheck: false });
    if (keda) {
      expect(await keda.eval(KEDA_SCRIPT, 1, wait)).toBe(1);
      expect(await keda.llen(wait)).toBe(1);
      const prioritized = keys.bull(PREFIX, model, "prioritized");
      await queue.add("infer", { n: 1 }, { priority: 10 });
      await queue.add("infer", { n: 2 }, { priority: 10 });
      expect(await keda.eval(KEDA_SCRIPT, 1, prioritized)).toBe(2);
      await expect(keda.zrange(prioritized, 0, -1), "KEDA reads a set's members").rejects.toThrow(NOPERM);
      await expect(keda.lrange(wait, 0, -1), "KEDA reads a list's items").rejects.toThrow(NOPERM);
      await expect(keda.rpush(wait, "x"), "KEDA writes").rejects.toThrow(NOPERM);
      await expect(keda.llen(`${PREFIX}:tenants:keys`), "KEDA outside the wait lists").rejects.toThrow(NOPERM);
      await expect(keda.hgetall(keys.job(PREFIX, model, String(job.id))), "KEDA reads a job").rejects.toThrow(NOPERM);
      // Inside a script Redis 7 words the refusal differently.
      await expect(
        keda.eval("return redis.call('lrange', KEYS[1], 0, -1)", 1, wait),
        "KEDA through Lua",
      ).rejects.toThrow(/NOPERM|user executing the script can't run this command/);
    }

    // Worker: processes the job with BullMQ, reads the registry, never touches tenants.
    const wconn = as("worker", { maxRetriesPerRequest: null });
    const done = new Promise<unknown>((resolve, reject) => {
      const w = new Worker(queueName(model), async (j) => ({ doubled: (j.data as { n: number }).n * 2 }), {
        connection: wconn,
        prefix: queuePrefix(PREFIX, model),
      });
      w.on("completed", (j, result) => {
        if (j.id === job.id) void w.close().then(() => resolve(result));
      });
      w.on("failed", (_j, err) => reject(err));
      w.on("error", reject);
    });
    expect(await done).toEqual({ doubled: 42 });
    const worker = as("worker");
    expect(await worker.hget(`${PREFIX}:registry:models`, model)).toBe("{}");
    await expect(
      worker.hset(`${PREFIX}:registry:models`, model, "forged"),
      "worker writes the registry",
    ).rejects.toThrow(NOPERM);
    await expect(worker.hset(`${PREFIX}:tenants:defs`, "acme", "{}"), "worker writes tenants").rejects.toThrow(NOPERM);
    await expect(worker.hget(`${PREFIX}:tenants:keys`, "h"), "worker reads API key hashes").rejects.toThrow(NOPERM);
    await expect(
      worker.get(bucketKey(PREFIX, "tenant", "acme").key),
      "worker reads a tenant's token bucket",
    ).rejects.toThrow(NOPERM);

    // Audit: API and worker each append to their own writers' streams and list them in the
    // writers hash; neither may write the other role's streams; the CLI verifies them all.
    const auditKeys = { api: new AuditKey(randomBytes(32), "api"), worker: new AuditKey(randomBytes(32), "worker") };
    const silent = { info: () => undefined, error: () => undefined };
    const apiAudit = new AuditWriter(api, PREFIX, "api:acl", silent, auditKeys.api);
    const workerAudit = new AuditWriter(worker, PREFIX, "worker:acl", silent, auditKeys.worker);
    apiAudit.record("auth.denied", { clientIp: "127.0.0.1" });
    workerAudit.record("job.completed", { jobId: String(job.id) });
    await apiAudit.close();
    await workerAudit.close();
    expect(apiAudit.backlog + workerAudit.backlog).toBe(0);
    await expect(
      worker.xadd(auditStreamKey(PREFIX, apiAudit.writer), "*", "r", "{}"),
      "worker writes the API's audit stream",
    ).rejects.toThrow(NOPERM);
    await expect(
      api.xadd(auditStreamKey(PREFIX, workerAudit.writer), "*", "r", "{}"),
      "API writes a worker's audit stream",
    ).rejects.toThrow(NOPERM);
    // Each role may drop its own role's expired writers (what a writer does at start).
    await pub.hset(auditWritersKey(PREFIX), "api:gone", formatLease(auditKeys.api, "api:gone", 1, true));
    expect(await pruneExpiredWriters(api, PREFIX, [auditKeys.api], (w) => w.startsWith("api:"))).toBe(1);
    expect(await pruneExpiredWriters(worker, PREFIX, [auditKeys.worker], (w) => w.startsWith("worker:"))).toBe(0);
    const report = await verifyAuditStream(pub, PREFIX, [auditKeys.api, auditKeys.worker]);
    expect(report.problems).toEqual([]);
    expect(report).toMatchObject({ records: 2, writers: 2 });
    await expect(
      pub.xadd(auditStreamKey(PREFIX, apiAudit.writer), "*", "r", "{}"),
      "publisher writes the API's audit stream",
    ).rejects.toThrow(NOPERM);

    // A job's settlement: the worker drops its inputs and leaves an outbox entry in the
    // queue's slot (settleFinal-3.lua), and may read or write nothing of its tenant's, its
    // batch's or the notifications; the API's outbox relay applies the entry.
    const jobId = String(job.id);
    const batchId = "batch_acl0000000000000000";
    const batch = keys.batch(PREFIX, "acme", batchId);
    const notifications = keys.notifications(PREFIX);
    await api
      .multi()
      .hset(batch, { created: Date.now(), sealed: 1, accepted: 1, notify: "tenant" })
      .pexpire(batch, 60_000)
      .exec();
    await api
      .multi()
      .set(keys.quotaHeld(PREFIX, "acme", jobId), "4")
      .set(keys.tenantQueuedJobs(PREFIX, "acme"), "1")
      .set(keys.tenantQueuedBytes(PREFIX, "acme"), "4")
      .exec();
    const data = { tenant: "acme", batchRef: { id: batchId, line: 1 }, notify: {} } as JobData;
    const call = settleFinalCall(PREFIX, model, jobId, data);
    expect(await scripts(worker).settleFinal(call.keys, call.args)).toBe(1);
    await expect(worker.get(keys.tenantQueuedJobs(PREFIX, "acme")), "worker reads a tenant's quota").rejects.toThrow(
      NOPERM,
    );
    await expect(worker.hget(batch, "accepted"), "worker reads a batch").rejects.toThrow(NOPERM);
    await expect(worker.xadd(notifications, "*", "k", "job"), "worker writes notifications").rejects.toThrow(NOPERM);
    const relayWarnings: string[] = [];
    const relay = new OutboxRelay(
      api,
      { prefix: PREFIX, consumer: "api-1", claimIdleMs: 10_000, idleMaxMs: 5 },
      { warn: (obj, msg) => relayWarnings.push(`${msg} ${JSON.stringify(obj)}`) },
    );
    relay.setModels([model]);
    relay.start();
    for (let i = 0; i < 400 && (await api.xlen(keys.outbox(PREFIX, model))) > 0; i++) {
      await new Promise((r) => setTimeout(r, 25));
    }
    await relay.close();
    expect(relayWarnings).toEqual([]);
    expect(await api.xlen(keys.outbox(PREFIX, model))).toBe(0);
    expect(await api.mget(keys.tenantQueuedJobs(PREFIX, "acme"), keys.tenantQueuedBytes(PREFIX, "acme"))).toEqual([
      "0",
      "0",
    ]);
    expect(await api.hget(keys.batchResults(PREFIX, "acme", batchId), "1")).toContain('"s":"completed"');
    // Notifications: the job's and, its last line recorded, the batch's; the API's notifier reads them.
    expect(await api.xlen(notifications)).toBe(2);
    await api.xgroup("CREATE", notifications, "notifier", "0");
    expect(await api.xreadgroup("GROUP", "notifier", "api-1", "COUNT", 10, "STREAMS", notifications, ">")).toHaveLength(
      1,
    );
    const deliveries = new Queue("webhooks", { connection: api, prefix: PREFIX });
    await deliveries.add("job.completed", { tenant: "acme" }, { jobId: "msg_acl" });
    await expect(
      worker.hgetall(`${PREFIX}:webhooks:msg_acl`),
      "worker reads the webhooks queue (its targets)",
    ).rejects.toThrow(NOPERM);
    await deliveries.close();
    await queue.close();

    // No application role may run dangerous or admin commands.
    for (const role of ["api", "worker", "publisher"]) {
      const c = as(role);
      for (const cmd of [
        ["CONFIG", "GET", "*"],
        ["KEYS", "*"],
        ["ACL", "LIST"],
        ["SAVE"],
        ["CLIENT", "KILL", "ID", "999999"],
        ["SCRIPT", "FLUSH"],
        ["FUNCTION", "LIST"],
      ]) {
        await expect(c.call(cmd[0] ?? "", ...cmd.slice(1)), `${role} ${cmd.join(" ")}`).rejects.toThrow(NOPERM);
      }
      // The k8s redis.conf also renames FLUSHALL away (an unknown command there).
      await expect(c.call("FLUSHALL"), `${role} FLUSHALL`).rejects.toThrow(/NOPERM|unknown command/);
    }

    // The health user may PING and nothing else.
    const health = as("health", { enableReadyCheck: false });
    expect(await health.ping()).toBe("PONG");
    await expect(health.get(`${PREFIX}:x`)).rejects.toThrow(NOPERM);
  });
});

describe("Kubernetes Redis: credentials", () => {
  const { docs } = renderOverlay("base");

  it("puts no password on a command line: users come from an ACL file, not --requirepass", () => {
    const sts = named(docs, "StatefulSet", "citadel-redis");
    const pod = at(sts, "spec", "template", "spec");
    for (const c of [...arr(at(pod, "initContainers")), ...arr(at(pod, "containers"))]) {
      const argv = [...arr(at(c, "command")), ...arr(at(c, "args"))].map(str).join(" ");
      expect(argv, str(at(c, "name"))).not.toMatch(/requirepass|--pass\b|\s-a\s|REDIS_PASSWORD/);
      // Passwords reach Redis's pod as files only (the init container hashes them).
      expect(JSON.stringify(at(c, "env") ?? []), str(at(c, "name"))).not.toContain("secretKeyRef");
    }
    const conf = configMapData(docs, "citadel-redis-config")["redis.conf"] ?? "";
    expect(conf).toMatch(/^aclfile \/run\/redis-acl\/users\.acl$/m);
    expect(conf).not.toMatch(/^requirepass/m);
  });

  it.skipIf(!RENDERER)("reads the same rules as docker compose (infra/redis/acl-rules.conf)", () => {
    expect(configMapData(docs, "citadel-redis-acl")["acl-rules.conf"]).toBe(read("infra/redis/acl-rules.conf"));
    expect(read("infra/compose/gen-secrets.mjs")).toContain('"../redis/acl-rules.conf"');
  });

  it("connects each role as its own ACL user: API, workers, publisher and KEDA", () => {
    const users = (comp: string, from = docs) =>
      from
        .filter((d) => d.kind === "Deployment" || d.kind === "Job")
        .filter((d) => at(d, "spec", "template", "metadata", "labels", "app.kubernetes.io/component") === comp)
        .flatMap((d) => arr(at(d, "spec", "template", "spec", "containers")))
        .map((c) => {
          const env = arr(at(c, "env"));
          const url = str(
            at(
              env.find((e) => at(e, "name") === "REDIS_URL"),
              "value",
            ),
          );
          const key = str(
            at(
              env.find((e) => at(e, "name") === "REDIS_PASSWORD"),
              "valueFrom",
              "secretKeyRef",
              "key",
            ),
          );
          return `${new URL(url.replace("$(REDIS_PASSWORD)", "x")).username}:${key}`;
        });
    expect(new Set(users("api"))).toEqual(new Set(["api:api"]));
    expect(new Set(users("worker"))).toEqual(new Set(["worker:worker"]));
    expect(new Set(users("publisher", renderOverlay("cpu").docs))).toEqual(new Set(["publisher:publisher"]));
    for (const so of docs.filter((d) => d.kind === "ScaledObject")) {
      const triggers = arr(at(so, "spec", "triggers")).filter((t) => at(t, "type") === "redis");
      expect(triggers.length).toBeGreaterThan(0);
      for (const trigger of triggers) expect(at(trigger, "metadata", "username")).toBe("keda");
    }
    const auth = named(docs, "TriggerAuthentication", "citadel-redis");
    expect(arr(at(auth, "spec", "secretTargetRef"))).toEqual([
      { parameter: "password", name: "citadel-redis-users", key: "keda" },
    ]);
  });
});
