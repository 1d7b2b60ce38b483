import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { AuditKey, AuditWriter, auditStreamKey, verifyAuditStream } from "@citadel/audit";
import { bullConnection, keys, queueName, queuePrefix, type RedisConn, redisClient } from "@citadel/queue";
import { bucketKey, RateLimiter } from "@citadel/submit";
import { Queue } from "bullmq";
import { Cluster } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureRedisBinaries, type LocalCluster, startRedisCluster } from "../support/redis-cluster.js";

// The deployment's per-role ACL users (infra/redis/acl-rules.conf) on every node of a
// Redis Cluster: each role's client still connects (it reads the slot map with CLUSTER
// SLOTS and checks CLUSTER INFO), and KEDA's user can read the slot map it needs for the
// redis-cluster scaler, besides LLEN of the wait lists. Token buckets and audit writers
// already have slots of their own (docs/cluster-layout.md): checked here, within the roles' rights.

const missing = ensureRedisBinaries();
if (missing) process.stderr.write(`cluster-acl.test: SKIPPED: ${missing}\n`);

const RULES = path.join(import.meta.dirname, "..", "..", "infra", "redis", "acl-rules.conf");
const ROLES = ["api", "worker", "publisher", "keda", "health"] as const;
const PREFIX = "{citadel}";
const dir = mkdtempSync(path.join(os.tmpdir(), "citadel-cluster-acl-"));
const passwords = Object.fromEntries(ROLES.map((r) => [r, randomBytes(12).toString("hex")])) as Record<
  (typeof ROLES)[number],
  string
>;
const admin = { user: "cluster-admin", password: randomBytes(12).toString("hex") };
let cluster: LocalCluster;
const clients: RedisConn[] = [];

/** The ACL file as the deployments build it (plaintext passwords here), plus an admin for redis-cli and replication. */
function aclFile(): string {
  const lines = ["user default off", `user ${admin.user} on >${admin.password} ~* &* +@all`];
  for (const line of readFileSync(RULES, "utf8").split("\n")) {
    const m = /^user (\S+) (.*)$/.exec(line.trim());
    if (!m) continue;
    const role = m[1] as (typeof ROLES)[number];
    lines.push(`user ${role} on >${passwords[role]} ${m[2]}`);
  }
  const file = path.join(dir, "users.acl");
  writeFileSync(file, `${lines.join("\n")}\n`, { mode: 0o600 });
  return file;
}

const seeds = () => cluster.nodes.map((n) => `127.0.0.1:${n.port}`);
const as = (role: (typeof ROLES)[number], kind: "bull" | "plain" | "keda" = "plain") => {
  const target = { REDIS_URL: `redis://${role}:${passwords[role]}@ignored:6379`, REDIS_CLUSTER_NODES: seeds() };
  const c =
    kind === "bull"
      ? bullConnection(target, () => undefined)
      : // KEDA (go-redis) reads the slot map but runs no ready check (CLUSTER INFO is not among its rights).
        redisClient(target, () => undefined, {
          maxRetriesPerRequest: 0,
          ...(kind === "keda" ? { enableReadyCheck: false } : {}),
        });
  clients.push(c);
  return c;
};

beforeAll(async () => {
  if (missing) return;
  cluster = await startRedisCluster({ aclFile: aclFile(), auth: admin });
}, 60_000);
afterAll(async () => {
  for (const c of clients) c.disconnect();
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(missing !== null)("the deployment's ACL users on a Redis Cluster", () => {
  it("the API and worker roles run BullMQ on the cluster within their rights", async () => {
    const api = as("api", "bull");
    const queue = new Queue(queueName("acl"), { connection: api, prefix: queuePrefix(PREFIX, "acl") });
    await queue.add("infer", { x: 1 }, { jobId: "acl.1" });
    expect(await queue.getWaitingCount()).toBe(1);
    await queue.close();
    const worker = as("worker");
    expect(await worker.llen(keys.bull(PREFIX, "acl", "wait"))).toBe(1);
    await expect(worker.get(`${PREFIX}:tenants:keys`)).rejects.toThrow(/NOPERM/);
    expect(api).toBeInstanceOf(Cluster);
  });

  it("the publisher (the CLI) reads and writes under the prefix", async () => {
    const p = as("publisher");
    await p.hset(`${PREFIX}:tenants:acl`, "id", "acl");
    expect(await p.hget(`${PREFIX}:tenants:acl`, "id")).toBe("acl");
  });

  it("KEDA's user reads the slot map (redis-cluster scaler) and the wait list's length, nothing else", async () => {
    const keda = as("keda", "keda");
    const slots = (await keda.cluster("SLOTS")) as unknown[];
    expect(slots.length).toBeGreaterThanOrEqual(3);
    expect(await keda.llen(keys.bull(PREFIX, "acl", "wait"))).toBe(1);
    await expect(keda.lrange(keys.bull(PREFIX, "acl", "wait"), 0, -1)).rejects.toThrow(/NOPERM/);
    await expect(keda.cluster("INFO")).rejects.toThrow(/NOPERM/);
  });

  it("spreads token buckets and audit writers over slots: the limiter still refuses, verify reads every writer", async () => {
    const api = as("api");
    const slot = async (key: string) => Number(await api.cluster("KEYSLOT", key));
    const byIp = { scope: "ip", id: "10.9.8.7", rate: 0.001, burst: 2 };
    const byTenant = { scope: "tenant", id: "acme", rate: 0.001, burst: 1 };
    expect(await slot(bucketKey(PREFIX, "ip", byIp.id).key)).not.toBe(
      await slot(bucketKey(PREFIX, "tenant", "acme").key),
    );
    const limiter = new RateLimiter(api, PREFIX);
    expect((await limiter.takeAll([byIp, byTenant])).allowed).toBe(true);
    // The tenant's slot refuses: the IP's charge (another slot) is given back, so the IP
    // alone still has a token left, then none.
    expect(await limiter.takeAll([byIp, byTenant])).toMatchObject({ allowed: false, scope: "tenant" });
    expect((await limiter.takeAll([byIp])).allowed).toBe(true);
    expect(await limiter.takeAll([byIp])).toMatchObject({ allowed: false, scope: "ip" });

    const keys = { api: new AuditKey(randomBytes(32), "api"), worker: new AuditKey(randomBytes(32), "worker") };
    const silent = { info: () => undefined, error: () => undefined };
    const writers = [
      new AuditWriter(api, PREFIX, "api:c", silent, keys.api),
      new AuditWriter(as("worker"), PREFIX, "worker:c", silent, keys.worker),
    ];
    for (const [i, w] of writers.entries()) {
      for (let n = 0; n < 3 + i; n++) w.record("job.completed", { jobId: `c.${n}` });
      await w.close(10_000);
      expect(w.backlog).toBe(0);
    }
    const stream = auditStreamKey(PREFIX, writers[0]?.writer ?? "");
    expect(stream.startsWith("{citadel:a:api:c:")).toBe(true);
    expect(await slot(stream)).not.toBe(await slot(PREFIX));
    const r = await verifyAuditStream(as("publisher"), PREFIX, [keys.api, keys.worker]);
    expect(r.problems).toEqual([]);
    expect(r).toMatchObject({ records: 7, writers: 2 });
  });
});
