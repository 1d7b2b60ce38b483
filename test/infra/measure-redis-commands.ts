/**
 * Measures what one BullMQ job costs Redis, for docs/capacity.md.
 *
 *   REDIS_URL=redis://127.0.0.1:6379 node --conditions=@citadel/source --import tsx test/infra/measure-redis-commands.ts [jobs]   (from the repository root)
 *
 * Use a Redis that nothing else is talking to (the numbers are server-wide
 * `INFO commandstats` deltas). For each path it prints, per job:
 *   - calls:      every command Redis executed, including those run inside Lua scripts;
 *   - topLevel:   round trips from clients (EVALSHA/EVAL counted once each);
 *   - usec:       Redis main-thread time spent in those commands (commandstats usec);
 *   - cpuUsec:    Redis process CPU (user+sys, INFO cpu), which adds networking/parsing.
 * Not a test: it is not named *.test.ts and vitest does not pick it up.
 */
import { Queue, Worker } from "bullmq";
import { Redis } from "ioredis";
import { monitorRedis } from "../support/redis-monitor.js";

type Stats = Map<string, { calls: number; usec: number }>;

const url = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const jobs = Number(process.argv[2] ?? "2000");
const prefix = `{citadel-measure-${process.pid}}`;

function parseCommandStats(info: string): Stats {
  const stats: Stats = new Map();
  for (const line of info.split("\n")) {
    const m = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line.trim());
    if (m?.[1] && m[2] && m[3]) stats.set(m[1], { calls: Number(m[2]), usec: Number(m[3]) });
  }
  return stats;
}

function parseCpu(info: string): number {
  const get = (k: string): number => Number(new RegExp(`^${k}:([\\d.]+)`, "m").exec(info)?.[1] ?? "0");
  return (get("used_cpu_user") + get("used_cpu_sys")) * 1e6;
}

async function snapshot(admin: Redis): Promise<{ stats: Stats; cpu: number }> {
  const [cmd, cpu] = await Promise.all([admin.info("commandstats"), admin.info("cpu")]);
  return { stats: parseCommandStats(cmd), cpu: parseCpu(cpu) };
}

/** Top-level and Lua-internal commands (MONITOR marks the latter "lua"), counted while `fn` runs. */
async function monitorCounts(fn: () => Promise<void>): Promise<{ topLevel: Record<string, number>; inner: number }> {
  const topLevel: Record<string, number> = {};
  let inner = 0;
  const monitor = await monitorRedis(url, ({ args, source }) => {
    if (source.includes("lua")) inner += 1;
    else {
      const name = (args[0] ?? "?").toLowerCase();
      if (name !== "info") topLevel[name] = (topLevel[name] ?? 0) + 1;
    }
  });
  await fn();
  await new Promise((r) => setTimeout(r, 200));
  monitor.close();
  return { topLevel, inner };
}

/**
 * Runs `setup` then `fn` twice: once plain (commandstats and CPU deltas; MONITOR would
 * inflate them), once under MONITOR to split round trips from script-internal commands.
 */
async function measure(
  admin: Redis,
  label: string,
  n: number,
  setup: () => Promise<void>,
  fn: () => Promise<void>,
): Promise<void> {
  await setup();
  const before = await snapshot(admin);
  await fn();
  const after = await snapshot(admin);
  let calls = 0;
  let scriptUsec = 0;
  for (const [name, a] of after.stats) {
    if (name === "info" || name === "monitor") continue;
    const b = before.stats.get(name) ?? { calls: 0, usec: 0 };
    if (a.calls - b.calls <= 0) continue;
    calls += a.calls - b.calls;
    if (name === "evalsha" || name === "eval") scriptUsec += a.usec - b.usec;
  }
  await setup();
  const { topLevel, inner } = await monitorCounts(fn);
  const perJob = (x: number): number => Number((x / n).toFixed(2));
  const roundTrips = Object.values(topLevel).reduce((a, b) => a + b, 0);
  process.stdout.write(
    `${JSON.stringify({
      path: label,
      jobs: n,
      perJob: {
        commands: perJob(calls),
        roundTrips: perJob(roundTrips),
        insideScripts: perJob(inner),
        scriptUsec: perJob(scriptUsec),
        redisCpuUsec: perJob(after.cpu - before.cpu),
        roundTripsByCommand: Object.fromEntries(Object.entries(topLevel).map(([k, v]) => [k, perJob(v)])),
      },
    })}\n`,
  );
}

async function drain(queue: Queue): Promise<void> {
  for (;;) {
    const c = await queue.getJobCounts("wait", "active", "prioritized");
    if ((c.wait ?? 0) + (c.active ?? 0) + (c.prioritized ?? 0) === 0) return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function main(): Promise<void> {
  const admin = new Redis(url);
  const connection = { url, maxRetriesPerRequest: null } as const;
  const payload = {
    tenant: "t1",
    model: "conv-small",
    version: "1",
    inputs: { x: { dtype: "float32", shape: [1, 4] } },
  };
  const opts = { removeOnComplete: { age: 3600, count: 1000 }, removeOnFail: { age: 86_400 }, attempts: 3 };

  const q1 = new Queue("infer-measure-a", { connection, prefix });
  await q1.waitUntilReady();
  const seed = async (): Promise<void> => {
    await q1.obliterate({ force: true });
    for (let i = 0; i < jobs; i += 500) {
      await q1.addBulk(Array.from({ length: Math.min(500, jobs - i) }, () => ({ name: "infer", data: payload, opts })));
    }
  };

  // 1. Producer: Queue.add, one job per call (what POST /v1/jobs does).
  await measure(
    admin,
    "producer Queue.add",
    jobs,
    () => q1.obliterate({ force: true }),
    async () => {
      for (let i = 0; i < jobs; i++) await q1.add("infer", payload, opts);
    },
  );

  // 2. Consumer: Worker with a processor (fetch-next-on-complete), concurrency 1 and 16.
  for (const concurrency of [1, 16]) {
    await measure(admin, `consumer Worker processor, concurrency ${concurrency}`, jobs, seed, async () => {
      const w = new Worker("infer-measure-a", async () => ({ ok: true }), { connection, prefix, concurrency });
      await drain(q1);
      await w.close();
    });
  }

  // 3. Consumer: manual fetch (micro-batch path): getNextJob(block:false) + moveToCompleted(fetchNext=false).
  const w3 = new Worker("infer-measure-a", null, { connection, prefix, autorun: false });
  await w3.waitUntilReady();
  const token = "measure-token";
  await measure(admin, "consumer manual getNextJob + moveToCompleted", jobs, seed, async () => {
    for (;;) {
      const job = await w3.getNextJob(token, { block: false });
      if (!job) break;
      await job.moveToCompleted({ ok: true }, token, false);
    }
  });
  await w3.close();

  // 4. Throughput: producers and consumers running at once (addBulk 50 + 4 workers x concurrency 32).
  await q1.obliterate({ force: true });
  const total = jobs * 5;
  const workers = Array.from(
    { length: 4 },
    () => new Worker("infer-measure-a", async () => ({ ok: true }), { connection, prefix, concurrency: 32 }),
  );
  const t0 = performance.now();
  const cpu0 = (await snapshot(admin)).cpu;
  for (let i = 0; i < total; i += 50) {
    await q1.addBulk(Array.from({ length: 50 }, () => ({ name: "infer", data: payload, opts })));
  }
  await drain(q1);
  const seconds = (performance.now() - t0) / 1000;
  const cpu1 = (await snapshot(admin)).cpu;
  process.stdout.write(
    `${JSON.stringify({
      path: "throughput (1 node process, 4 workers x 32)",
      jobs: total,
      jobsPerSecond: Math.round(total / seconds),
      redisCpuUtilisation: Number(((cpu1 - cpu0) / (seconds * 1e6)).toFixed(2)),
    })}\n`,
  );
  await Promise.all(workers.map((w) => w.close()));
  await q1.obliterate({ force: true });
  await q1.close();
  admin.disconnect();
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
