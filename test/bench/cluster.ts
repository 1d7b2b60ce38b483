/**
 * Cluster capacity (`bench.ts --only cluster`): what one job costs each shard of a
 * Redis Cluster, by key family, and what rate a shard carries (docs/capacity.md).
 *
 * A local cluster of 3 masters and 3 replicas (test/support/redis-cluster.ts), one API
 * and one worker as real processes, a no-op model (identity, 16 floats), jobs submitted
 * and awaited in one request (`POST ?wait`, binary bodies) by `clients` clients. Names
 * are chosen by hashing (keySlot, checked against CLUSTER KEYSLOT) so that each master
 * holds one kind of cost:
 *   queue shard       the models' queue slots ({p:q:<model>}): BullMQ, inputs, outbox;
 *   tenant shard      the tenant's slot ({p:t:<tenant>}), the client IP's buckets
 *                     ({p:ip:127.0.0.1}) and both processes' audit streams ({p:a:<writer>}):
 *                     the families that spread with tenants, clients and processes;
 *   deployment shard  the deployment's own slot ({p}): registry, tenants, batches,
 *                     notifications, webhooks, the audit writers hash.
 * Audit writer ids carry a random suffix, so a process whose stream hashed elsewhere is
 * restarted (a few tries; the report says where each family ended up).
 *
 * Per master, between INFO snapshots: commands (Lua's inner ones counted), Redis CPU
 * (INFO cpu: user + system, all threads), memory and keys; jobs/s end to end. Then a
 * spread pass: one model per master, to show the queue cost following its slot.
 *
 * On a 2-core machine the fleet (API, worker, the bench's clients) saturates long before
 * Redis: jobs/s here is the fleet's. Jobs/s one shard carries is derived:
 * (utilisation × one core) / (Redis CPU per job on that shard).
 */
import os from "node:os";
import { auditStreamKey, auditWritersKey } from "@citadel/audit";
import { buildIdentityModel } from "@citadel/onnx";
import { keys, tagged } from "@citadel/queue";
import { Cluster, Redis } from "ioredis";
import { startRedisCluster } from "../support/redis-cluster.js";
import {
  apiEnv,
  Client,
  cpuMsOf,
  freePort,
  type Proc,
  randomInput,
  say,
  setupFleetCore,
  sleep,
  startProc,
  workerEnv,
} from "./harness.js";
import {
  firstWhere,
  jobsPerShard,
  keySlot,
  medianOf,
  type NodeDelta,
  type NodeSnapshot,
  nodeDelta,
  nodeSnapshot,
  type SlotRanges,
  shardsFor,
  slotOwner,
} from "./shard-model.js";
import { type PreparedBody, prepareBody } from "./wire.js";

const WIDTH = 16;
/**
 * Completed jobs kept 3 s: within a pass, every finish also removes the jobs that aged
 * out, as in production at any TTL once it has been reached (memory per retained job is
 * read with MEMORY USAGE instead).
 */
const RESULT_TTL_MS = 3000;
const ROLES = ["queue", "tenant", "deployment"] as const;
type Role = (typeof ROLES)[number];

export interface ClusterBenchOptions {
  /** Jobs per measured pass. */
  jobs: number;
  repeats: number;
  /** Clients submitting at once. */
  clients: number;
  /** Share of one core a shard is planned to use. */
  utilisation: number;
}

export interface ShardFigures {
  master: string;
  /** Key families this master holds (what its cost is made of). */
  holds: string[];
  commandsPerJob: number;
  cpuUsPerJob: number;
  /** Less what the shard did at the idle rate over the pass (cluster bus, timers, idle polls). */
  commandsPerJobNet: number;
  cpuUsPerJobNet: number;
  /** Top commands per job (Lua's inner commands under their own names). */
  topPerJob: Record<string, number>;
  memoryBytesPerJob: number;
  keysPerJob: number;
  /** Network bytes per job: from clients (and, on a replica, its master), to clients and replicas. */
  netInBytesPerJob: number;
  netOutBytesPerJob: number;
}

export interface ClusterPass {
  jobs: number;
  seconds: number;
  jobsPerSec: number;
  failed: number;
  shards: Record<Role, ShardFigures>;
  /** CPU the replicas used per job, all three together (µs). */
  replicasCpuUsPerJob: number;
  /** The fleet's CPU per job (ms): API, worker, the bench's own clients. */
  fleetCpuMsPerJob: { api: number; worker: number; clients: number };
}

export interface ClusterReport {
  redisVersion: string;
  masters: number;
  replicas: number;
  clients: number;
  utilisation: number;
  prefix: string;
  tenant: string;
  models: { split: string[]; spread: Record<string, string> };
  /** Whether each family sits where the split needs it (audit writers are hashed at random). */
  placement: Record<string, string>;
  idle: Record<Role, { commandsPerSec: number; cpuUsPerSec: number }>;
  /** Medians over the repeats, per shard; each figure the median of its own. */
  median: ClusterPass;
  runs: ClusterPass[];
  /** Bytes Redis holds per retained completed job, per queue and per audit record (MEMORY USAGE). */
  memory: {
    completedJobHashBytes: number;
    eventsStreamBytesPerEntry: number;
    eventsStreamEntries: number;
    auditBytesPerRecord: number;
  };
  /** One model per master: jobs/s and Redis CPU per job of each master (µs, per job of all models). */
  spread: {
    jobsPerSec: number;
    cpuUsPerJobByMaster: Record<string, number>;
    commandsPerJobByMaster: Record<string, number>;
  };
  derived: {
    /** The idle cost taken off each shard's share (µs/s, the highest of the three). */
    idleUsPerSec: number;
    /** Jobs/s a shard holding only this family carries at `utilisation`, from the net CPU per job. */
    jobsPerShard: Record<Role, number>;
    /** Redis CPU per job over all families (µs, net of idle): compare with the single-Redis figure. */
    totalCpuUsPerJob: number;
    totalCommandsPerJob: number;
    plans: { target: number; shards: number; cores: number; minModels: number; minTenants: number }[];
  };
}

interface NodeConn {
  addr: string;
  port: number;
  redis: Redis;
  master: boolean;
}

async function snapshot(n: NodeConn): Promise<NodeSnapshot> {
  const [cpu, commandstats, memory, keyspace, stats] = await Promise.all(
    ["cpu", "commandstats", "memory", "keyspace", "stats"].map((s) => n.redis.info(s)),
  );
  return nodeSnapshot({
    cpu: cpu as string,
    commandstats: commandstats as string,
    memory: memory as string,
    keyspace: keyspace as string,
    stats: stats as string,
  });
}

const snapshotAll = (nodes: readonly NodeConn[]) => Promise.all(nodes.map(snapshot));

const r1 = (n: number) => Math.round(n * 10) / 10;

/** Runs `jobs` jobs with `clients` clients, bodies taken in turn; resolves with the count that failed. */
async function drive(client: Client, bodies: readonly PreparedBody[], jobs: number, clients: number): Promise<number> {
  let next = 0;
  let failed = 0;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      for (let i = next++; i < jobs; i = next++) {
        const b = bodies[i % bodies.length] as PreparedBody;
        const r = await client.submitAndWait(b.body, b.wire === "binary" ? { headerLength: b.headerLength } : {});
        if (r.view?.status !== "completed") failed++;
      }
    }),
  );
  return failed;
}

/** Waits until every outbox is empty (the relay applied and deleted each entry), at most 10 s. */
async function outboxesDrained(admin: Cluster, prefix: string, models: readonly string[]): Promise<void> {
  const end = Date.now() + 10_000;
  while (Date.now() < end) {
    const lens = await Promise.all(models.map((m) => admin.xlen(keys.outbox(prefix, m))));
    if (lens.every((l) => l === 0)) return;
    await sleep(50);
  }
  say("cluster: outboxes not drained after 10 s; measuring anyway");
}

export async function runClusterBench(o: ClusterBenchOptions): Promise<ClusterReport> {
  const cluster = await startRedisCluster({ log: say });
  const conns: NodeConn[] = [];
  let admin: Cluster | null = null;
  let fleet: Awaited<ReturnType<typeof setupFleetCore>> | null = null;
  const procs = new Set<Proc>();
  try {
    admin = new Cluster(
      cluster.nodes.map((n) => ({ host: "127.0.0.1", port: n.port })),
      { redisOptions: { maxRetriesPerRequest: 1 } },
    );
    admin.on("error", () => undefined);
    const owner = slotOwner((await admin.cluster("SLOTS")) as unknown as SlotRanges);
    for (const n of cluster.nodes) {
      const redis = new Redis(n.port, "127.0.0.1", { maxRetriesPerRequest: 1 });
      redis.on("error", () => undefined);
      const role = /role:(\w+)/.exec(await redis.info("replication"))?.[1];
      conns.push({ addr: `127.0.0.1:${n.port}`, port: n.port, redis, master: role === "master" });
    }
    const masters = conns.filter((c) => c.master).sort((a, b) => a.port - b.port);
    if (masters.length < 3) throw new Error(`cluster: ${masters.length} masters, 3 needed`);
    const [mq, mt, md] = masters.map((m) => m.addr) as [string, string, string];
    const on = (key: string) => owner(keySlot(key));
    const range = (n: number) => Array.from({ length: n }, (_, i) => i);

    // Names hashed so that each master holds one kind of cost.
    const prefix = firstWhere(
      "prefix",
      range(20_000).map((i) => `{cap${i}}`),
      (p) => on(p) === md && on(tagged(p, "ip:127.0.0.1")) === mt,
    );
    const tenant = firstWhere(
      "tenant",
      range(20_000).map((i) => `tenant${i}`),
      (t) => on(keys.tenantQueuedJobs(prefix, t)) === mt,
    );
    const split: string[] = [];
    for (let i = 0; split.length < 2; i++) if (on(keys.bull(prefix, `q${i}`, "wait")) === mq) split.push(`q${i}`);
    const spread: Record<string, string> = {};
    for (const m of masters) {
      spread[m.addr] = firstWhere(
        "spread model",
        range(20_000).map((i) => `s${i}`),
        (x) => on(keys.bull(prefix, x, "wait")) === m.addr,
      );
    }
    // The local CRC16 must agree with the server's.
    for (const key of [prefix, keys.tenantQueuedJobs(prefix, tenant), keys.bull(prefix, split[0] as string, "wait")]) {
      const server = Number(await admin.cluster("KEYSLOT", key));
      if (server !== keySlot(key)) throw new Error(`cluster: keySlot(${key}) = ${keySlot(key)}, server says ${server}`);
    }
    say(`cluster: prefix ${prefix} (deployment on ${md}), tenant ${tenant} (on ${mt}), models ${split} (on ${mq})`);

    fleet = await setupFleetCore({ redisUrl: cluster.url, prefix });
    const f = fleet;
    const apiKey = await f.addTenant({
      id: tenant,
      models: ["*"],
      requestRate: 1_000_000,
      requestBurst: 1_000_000,
      sampleRate: 10_000_000,
      sampleBurst: 10_000_000,
      maxQueuedJobs: 1_000_000,
    });
    const allModels = [...split, ...Object.values(spread)];
    for (const name of allModels)
      await f.publish(buildIdentityModel("float32", ["N", WIDTH]), {
        name,
        version: "1",
        spec: { maxBatch: 64, maxQueueDelayMs: 0, executionProviders: ["cpu"], inputs: { x: { range: [-1, 1] } } },
      });
    const bodies = (models: readonly string[]) =>
      models.map((m, i) =>
        prepareBody("binary", m, [{ name: "x", shape: [1, WIDTH], data: randomInput(WIDTH, 7 + i) }]),
      );
    const splitBodies = bodies(split);

    // API and worker; restarted until their audit streams hash to the tenant's master.
    let api: Proc | null = null;
    let worker: Proc | null = null;
    let client: Client | null = null;
    // A writer joins the writers hash with its first flush: wait for it (a few seconds at most).
    const writerOf = async (start: string) => {
      for (let t = 0; t < 50; t++) {
        const w = (await (admin as Cluster).hkeys(auditWritersKey(prefix))).find((x) => x.startsWith(start));
        if (w) return w;
        await sleep(100);
      }
      return undefined;
    };
    let workerId = "";
    const placement: Record<string, string> = {};
    for (let attempt = 1; attempt <= 8; attempt++) {
      if (!api) {
        const port = await freePort();
        api = await startProc(
          "api",
          `api-cluster-${attempt}`,
          apiEnv(f.env, port, { RESULT_TTL_MS: String(RESULT_TTL_MS) }),
          f.logDir,
          port,
        );
        procs.add(api);
        client = new Client(api.url, apiKey);
      }
      if (!worker) {
        const port = await freePort();
        workerId = `bench-cluster-${attempt}`;
        worker = await startProc(
          "worker",
          `worker-cluster-${attempt}`,
          workerEnv(f.env, port, workerId, { WORKER_MODELS: allModels.join(",") }),
          f.logDir,
          port,
        );
        procs.add(worker);
      }
      await drive(client as Client, splitBodies, 10, 2);
      const apiWriter = await writerOf(`api:${os.hostname()}:${api.pid}:`);
      const workerWriter = await writerOf(`worker:${workerId}:`);
      const apiOn = apiWriter ? on(auditStreamKey(prefix, apiWriter)) : "unknown";
      const workerOn = workerWriter ? on(auditStreamKey(prefix, workerWriter)) : "unknown";
      placement.apiAudit = apiOn === mt ? "tenant shard" : `${apiOn} (not the tenant shard)`;
      placement.workerAudit = workerOn === mt ? "tenant shard" : `${workerOn} (not the tenant shard)`;
      say(`cluster: start ${attempt}: API audit stream on ${apiOn}, worker's on ${workerOn} (wanted ${mt})`);
      if (apiOn === mt && workerOn === mt) break;
      if (attempt === 8) {
        say(`cluster: audit streams not both on ${mt} after 8 starts: ${JSON.stringify(placement)}`);
        break;
      }
      if (apiOn !== mt) {
        await api.stop();
        procs.delete(api);
        api = null;
      }
      if (workerOn !== mt) {
        // Its queued jobs are none (every warm-up job completed): stopping loses nothing.
        await (worker as Proc).stop();
        procs.delete(worker as Proc);
        worker = null;
      }
    }
    placement.queues = `${split.join(",")} on ${mq}`;
    placement.tenant = `${tenant} and ip:127.0.0.1 on ${mt}`;
    placement.deployment = `${prefix} on ${md}`;
    const c = client as Client;
    const apiProc = api as Proc;
    const workerProc = worker as Proc;
    // Every model loaded by the worker and listened to by the API; past the API's
    // event-listener warm-up (waiters read the job back while it is young).
    await drive(c, bodies(allModels), 50 * allModels.length, o.clients);
    await sleep(5500);

    const masterIdx = (addr: string) => conns.findIndex((n) => n.addr === addr);
    const roleAddr: Record<Role, string> = { queue: mq, tenant: mt, deployment: md };
    const holds: Record<Role, string[]> = {
      queue: split.map((m) => `{${prefix.slice(1, -1)}:q:${m}}`),
      tenant: [
        `{${prefix.slice(1, -1)}:t:${tenant}}`,
        `{${prefix.slice(1, -1)}:ip:127.0.0.1}`,
        ...(placement.apiAudit === "tenant shard" ? ["API audit stream"] : []),
        ...(placement.workerAudit === "tenant shard" ? ["worker audit stream"] : []),
      ],
      deployment: [prefix],
    };

    // Idle: what the fleet costs each master with no job (relay polls, timers, cluster bus).
    const idleMs = 3000;
    const i0 = await snapshotAll(conns);
    await sleep(idleMs);
    const i1 = await snapshotAll(conns);
    const idle = Object.fromEntries(
      ROLES.map((r) => {
        const k = masterIdx(roleAddr[r]);
        const d = nodeDelta(i0[k] as NodeSnapshot, i1[k] as NodeSnapshot);
        return [
          r,
          { commandsPerSec: r1(d.commands / (idleMs / 1000)), cpuUsPerSec: Math.round(d.cpuUs / (idleMs / 1000)) },
        ];
      }),
    ) as ClusterReport["idle"];

    const pass = async (bodyList: readonly PreparedBody[], models: readonly string[]) => {
      const a = await snapshotAll(conns);
      const cpu0 = { api: cpuMsOf(apiProc.pid), worker: cpuMsOf(workerProc.pid), clients: process.cpuUsage() };
      const t0 = performance.now();
      const failed = await drive(c, bodyList, o.jobs, o.clients);
      const seconds = (performance.now() - t0) / 1000;
      await outboxesDrained(admin as Cluster, prefix, models);
      const cu = process.cpuUsage(cpu0.clients);
      const fleetCpu = {
        api: cpuMsOf(apiProc.pid) - cpu0.api,
        worker: cpuMsOf(workerProc.pid) - cpu0.worker,
        clients: (cu.user + cu.system) / 1000,
      };
      const b = await snapshotAll(conns);
      const deltas: NodeDelta[] = conns.map((_, k) => nodeDelta(a[k] as NodeSnapshot, b[k] as NodeSnapshot));
      return { seconds, failed, deltas, fleetCpu };
    };

    const runs: ClusterPass[] = [];
    for (let rep = 0; rep < o.repeats; rep++) {
      say(`cluster: pass ${rep + 1}/${o.repeats}: ${o.jobs} jobs, ${o.clients} clients, models ${split.join(",")}`);
      const p = await pass(splitBodies, split);
      const n = o.jobs;
      const shards = Object.fromEntries(
        ROLES.map((r) => {
          const d = p.deltas[masterIdx(roleAddr[r])] as NodeDelta;
          const top = Object.entries(d.byCommand)
            .sort((x, y) => y[1] - x[1])
            .slice(0, 10);
          const fig: ShardFigures = {
            master: roleAddr[r],
            holds: holds[r],
            commandsPerJob: r1(d.commands / n),
            cpuUsPerJob: r1(d.cpuUs / n),
            commandsPerJobNet: r1(Math.max(0, d.commands - idle[r].commandsPerSec * p.seconds) / n),
            cpuUsPerJobNet: r1(Math.max(0, d.cpuUs - idle[r].cpuUsPerSec * p.seconds) / n),
            topPerJob: Object.fromEntries(top.map(([k, v]) => [k, Math.round((v / n) * 100) / 100])),
            memoryBytesPerJob: Math.round(d.memoryBytes / n),
            keysPerJob: Math.round((d.keys / n) * 100) / 100,
            netInBytesPerJob: Math.round(d.netInBytes / n),
            netOutBytesPerJob: Math.round(d.netOutBytes / n),
          };
          return [r, fig];
        }),
      ) as Record<Role, ShardFigures>;
      const replicas = conns.flatMap((x, k) => (x.master ? [] : [p.deltas[k] as NodeDelta]));
      const run: ClusterPass = {
        jobs: n,
        seconds: Math.round(p.seconds * 100) / 100,
        jobsPerSec: Math.round(n / p.seconds),
        failed: p.failed,
        shards,
        replicasCpuUsPerJob: r1(replicas.reduce((s, d) => s + d.cpuUs, 0) / n),
        fleetCpuMsPerJob: {
          api: Math.round((p.fleetCpu.api / n) * 100) / 100,
          worker: Math.round((p.fleetCpu.worker / n) * 100) / 100,
          clients: Math.round((p.fleetCpu.clients / n) * 100) / 100,
        },
      };
      say(
        `cluster: ${run.jobsPerSec} jobs/s; µs/job queue ${shards.queue.cpuUsPerJob}, tenant ${shards.tenant.cpuUsPerJob}, deployment ${shards.deployment.cpuUsPerJob}`,
      );
      runs.push(run);
    }

    const med = (f: (r: ClusterPass) => number) => medianOf(runs.map(f));
    const medShard = (r: Role): ShardFigures => {
      const mid = [...runs].sort((x, y) => x.shards[r].cpuUsPerJob - y.shards[r].cpuUsPerJob)[
        Math.floor((runs.length - 1) / 2)
      ] as ClusterPass;
      return {
        ...mid.shards[r],
        commandsPerJob: med((x) => x.shards[r].commandsPerJob),
        cpuUsPerJob: med((x) => x.shards[r].cpuUsPerJob),
        commandsPerJobNet: med((x) => x.shards[r].commandsPerJobNet),
        cpuUsPerJobNet: med((x) => x.shards[r].cpuUsPerJobNet),
        memoryBytesPerJob: med((x) => x.shards[r].memoryBytesPerJob),
        netInBytesPerJob: med((x) => x.shards[r].netInBytesPerJob),
        netOutBytesPerJob: med((x) => x.shards[r].netOutBytesPerJob),
      };
    };
    const median: ClusterPass = {
      jobs: o.jobs,
      seconds: med((x) => x.seconds),
      jobsPerSec: med((x) => x.jobsPerSec),
      failed: med((x) => x.failed),
      shards: { queue: medShard("queue"), tenant: medShard("tenant"), deployment: medShard("deployment") },
      replicasCpuUsPerJob: med((x) => x.replicasCpuUsPerJob),
      fleetCpuMsPerJob: {
        api: med((x) => x.fleetCpuMsPerJob.api),
        worker: med((x) => x.fleetCpuMsPerJob.worker),
        clients: med((x) => x.fleetCpuMsPerJob.clients),
      },
    };

    // What a retained completed job, an events entry and an audit record hold (on their masters).
    const nodeOf = (key: string) => conns[masterIdx(on(key))]?.redis as Redis;
    const usage = async (key: string) =>
      Number((await nodeOf(key).call("MEMORY", "USAGE", key, "SAMPLES", "0")) ?? Number.NaN);
    const q0 = split[0] as string;
    const lastDone = (await admin.zrevrange(keys.bull(prefix, q0, "completed"), 0, 0))[0];
    const events = keys.bull(prefix, q0, "events");
    const eventsLen = await admin.xlen(events);
    const apiWriter = (await admin.hkeys(auditWritersKey(prefix))).find((w) =>
      w.startsWith(`api:${os.hostname()}:${apiProc.pid}:`),
    );
    const auditKey = apiWriter ? auditStreamKey(prefix, apiWriter) : null;
    const memory = {
      completedJobHashBytes: lastDone ? await usage(keys.job(prefix, q0, lastDone)) : Number.NaN,
      eventsStreamBytesPerEntry: eventsLen > 0 ? Math.round((await usage(events)) / eventsLen) : Number.NaN,
      eventsStreamEntries: eventsLen,
      auditBytesPerRecord:
        auditKey && (await admin.xlen(auditKey)) > 0
          ? Math.round((await usage(auditKey)) / (await admin.xlen(auditKey)))
          : Number.NaN,
    };

    // Spread: one model per master, jobs in turn.
    const spreadModels = Object.values(spread);
    say(`cluster: spread pass: ${o.jobs} jobs over ${spreadModels.join(",")} (one per master)`);
    const sp = await pass(bodies(spreadModels), spreadModels);
    const spreadFig = {
      jobsPerSec: Math.round(o.jobs / sp.seconds),
      cpuUsPerJobByMaster: Object.fromEntries(
        masters.map((m) => [m.addr, r1((sp.deltas[masterIdx(m.addr)] as NodeDelta).cpuUs / o.jobs)]),
      ),
      commandsPerJobByMaster: Object.fromEntries(
        masters.map((m) => [m.addr, r1((sp.deltas[masterIdx(m.addr)] as NodeDelta).commands / o.jobs)]),
      ),
    };

    // Per job: net of the idle rate, which is a shard's fixed cost (taken off its share).
    const cost = {
      queue: median.shards.queue.cpuUsPerJobNet,
      tenant: median.shards.tenant.cpuUsPerJobNet,
      deployment: median.shards.deployment.cpuUsPerJobNet,
    };
    const idleUs = Math.max(...ROLES.map((r) => idle[r].cpuUsPerSec));
    const plans = [10_000, 50_000].map((target) => {
      const p = shardsFor(target, cost, { utilisation: o.utilisation, packing: 0.8, idleUsPerSec: idleUs });
      return { target, shards: p.shards, cores: r1(p.cores), minModels: p.minModels, minTenants: p.minTenants };
    });
    const perShard = (us: number) =>
      us > 0 ? Math.round(jobsPerShard(us, o.utilisation, idleUs)) : Number.POSITIVE_INFINITY;
    const version = /redis_version:([\d.]+)/.exec(await (masters[0] as NodeConn).redis.info("server"))?.[1] ?? "?";
    return {
      redisVersion: version,
      masters: masters.length,
      replicas: conns.length - masters.length,
      clients: o.clients,
      utilisation: o.utilisation,
      prefix,
      tenant,
      models: { split, spread },
      placement,
      idle,
      median,
      runs,
      memory,
      spread: spreadFig,
      derived: {
        idleUsPerSec: idleUs,
        jobsPerShard: {
          queue: perShard(cost.queue),
          tenant: perShard(cost.tenant),
          deployment: perShard(cost.deployment),
        },
        totalCpuUsPerJob: r1(cost.queue + cost.tenant + cost.deployment),
        totalCommandsPerJob: r1(
          median.shards.queue.commandsPerJobNet +
            median.shards.tenant.commandsPerJobNet +
            median.shards.deployment.commandsPerJobNet,
        ),
        plans,
      },
    };
  } finally {
    for (const p of procs) await p.stop();
    await fleet?.close();
    admin?.disconnect();
    for (const n of conns) n.redis.disconnect();
    await cluster.stop();
  }
}

/** The report's lines for the bench's table. */
export function clusterLines(r: ClusterReport): string[] {
  const m = r.median;
  const out = [
    `cluster capacity (Redis ${r.redisVersion}, ${r.masters} masters + ${r.replicas} replicas, ${r.clients} clients, POST ?wait, no-op model; medians of ${r.runs.length}):`,
    `  end to end ${m.jobsPerSec} jobs/s (the fleet's limit on this machine, not Redis's); failed ${m.failed}; fleet CPU ms/job ${JSON.stringify(m.fleetCpuMsPerJob)}`,
  ];
  for (const role of ROLES) {
    const s = m.shards[role];
    out.push(
      `  ${`${role} shard`.padEnd(17)} ${String(s.commandsPerJob).padStart(5)} cmds/job ${String(s.cpuUsPerJob).padStart(6)} µs/job (net of idle ${s.commandsPerJobNet} cmds, ${s.cpuUsPerJobNet} µs) → ${r.derived.jobsPerShard[role]} jobs/s at ${r.utilisation * 100}% of a core (derived); idle ${r.idle[role].commandsPerSec} cmds/s ${r.idle[role].cpuUsPerSec} µs/s; memory growth ${s.memoryBytesPerJob} B/job; net in/out ${s.netInBytesPerJob}/${s.netOutBytesPerJob} B/job; holds ${s.holds.join(", ")}`,
    );
    out.push(`    ${JSON.stringify(s.topPerJob)}`);
  }
  out.push(
    `  total (net of idle) ${r.derived.totalCommandsPerJob} cmds/job, ${r.derived.totalCpuUsPerJob} µs/job on the masters; replicas ${m.replicasCpuUsPerJob} µs/job`,
  );
  out.push(
    `  memory (MEMORY USAGE): a completed job's hash ${r.memory.completedJobHashBytes} B; events stream ${r.memory.eventsStreamBytesPerEntry} B/entry × ${r.memory.eventsStreamEntries} entries per queue; audit ${r.memory.auditBytesPerRecord} B/record`,
  );
  out.push(
    `  spread (one model per master): ${r.spread.jobsPerSec} jobs/s; µs/job by master ${JSON.stringify(r.spread.cpuUsPerJobByMaster)}`,
  );
  for (const p of r.derived.plans)
    out.push(
      `  ${p.target} jobs/s: ${p.cores} cores of Redis CPU → ${p.shards} shards (${r.utilisation * 100}% of a core less ${r.derived.idleUsPerSec} µs/s idle each, 80% packing), ≥ ${p.minModels} models, ≥ ${p.minTenants} tenants`,
    );
  if (Object.values(r.placement).some((v) => v.includes("not the tenant shard")))
    out.push(`  placement: ${JSON.stringify(r.placement)}`);
  return out;
}
