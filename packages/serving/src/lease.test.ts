import { randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import { Writable } from "node:stream";
import { CitadelError, type JobData, type JobResult, type Priority } from "@citadel/contracts";
import {
  bullConnection,
  JOB_NAME,
  keys,
  parseOutboxEntry,
  priorityOptions,
  queueName,
  queuePrefix,
  type Redis,
  redisClient,
  scripts,
  settleFinalCall,
} from "@citadel/queue";
import { createLogger } from "@citadel/telemetry";
import { release } from "@citadel/tensors";
import { Job, Queue, Worker } from "bullmq";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { JobLease, type LeasedJob } from "./lease.js";

const url = process.env.CITADEL_TEST_REDIS_URL;
if (!url) throw new Error("CITADEL_TEST_REDIS_URL is not set: run through vitest's unit project");

const clients: Redis[] = [];
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const client = (c: Redis) => {
  clients.push(c);
  return c;
};
afterAll(async () => {
  for (const c of clients) c.disconnect();
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const logLines: string[] = [];
const log = createLogger({
  name: "lease-test",
  destination: new Writable({
    write(chunk, _enc, cb) {
      logLines.push(String(chunk));
      cb();
    },
  }),
});

const result: JobResult = {
  outputs: {},
  provider: "cpu",
  batchSize: 1,
  queueMs: 0,
  inferenceMs: 0,
  workerId: "w",
  artifactSha256: "0".repeat(64),
};

/** A lease on a fresh queue, with a producer and an ordinary client beside it. */
async function setup(opts: { attempts?: number; backoffMs?: number; blockSeconds?: number } = {}) {
  const prefix = `{t-lease-${randomBytes(4).toString("hex")}}`;
  const onError = () => {};
  // A single Redis here (CITADEL_TEST_REDIS_URL): MONITOR and CLIENT LIST need one node.
  const connection = client(bullConnection(url as string, onError) as Redis);
  const redis = client(redisClient(url as string, onError) as Redis);
  const lease = new JobLease({
    model: "m",
    connection,
    prefix,
    workerId: "w-test",
    lockDurationMs: 30_000,
    log,
    blockSeconds: opts.blockSeconds ?? 5,
  });
  const queue = new Queue<JobData>(queueName("m"), { connection, prefix: queuePrefix(prefix, "m") });
  cleanups.push(async () => {
    await lease.close();
    await queue.obliterate({ force: true });
    await queue.close();
  });
  const data = (tenant: string, batch = 1): JobData => ({
    tenant,
    model: "m",
    version: "1",
    inputs: [{ name: "x", dtype: "float32", shape: [batch, 1] }],
    batch,
    inputBytes: 4,
    timeoutMs: 5000,
    acceptedAt: Date.now(),
    deadline: Date.now() + 60_000,
    requestId: "r",
  });
  /**
   * Enqueues jobs as the API does: a quota reservation per job, and input bytes beside
   * the job; with a priority, where the API puts it (else the wait list's tail).
   */
  const add = async (n: number, tenant = "t", as: { priority?: Priority; batch?: number } = {}) => {
    const ids = Array.from({ length: n }, () => `m.${randomBytes(12).toString("hex")}`);
    await queue.addBulk(
      ids.map((id) => ({
        name: JOB_NAME,
        data: data(tenant, as.batch),
        opts: {
          jobId: id,
          attempts: opts.attempts ?? 1,
          backoff: { type: "fixed", delay: opts.backoffMs ?? 60_000 },
          ...(as.priority ? priorityOptions(as.priority) : {}),
        },
      })),
    );
    const m = redis.multi();
    for (const id of ids) {
      m.set(keys.quotaHeld(prefix, tenant, id), "4");
      m.incr(keys.tenantQueuedJobs(prefix, tenant));
      m.incrby(keys.tenantQueuedBytes(prefix, tenant), 4);
      m.set(keys.inputs(prefix, "m", id), Buffer.from([1, 2, 3, 4]));
    }
    await m.exec();
    return ids;
  };
  /** The outbox entries of tenant t's jobs: job id -> status (the API's relay would release their shares). */
  const settled = async () => {
    const entries = await redis.xrange(keys.outbox(prefix, "m"), "-", "+");
    const out: Record<string, string> = {};
    for (const [, f] of entries) {
      const e = parseOutboxEntry(f);
      if (e?.tenant === "t") out[e.id] = e.status;
    }
    return out;
  };
  // Scripts loaded (sent once per connection, then by SHA) and connections ready before
  // anything is measured: one job fetched and completed.
  await add(1, "warm-up");
  const [warm] = await lease.fetch(1);
  if (!warm) throw new Error("the warm-up job was not fetched");
  expect(await lease.complete(warm, JSON.stringify(result), warm.data as JobData)).toBe("completed");
  expect(await lease.fetch(1)).toEqual([]);
  const inputsOf = (l: LeasedJob) => keys.inputs(prefix, "m", l.id);
  return { prefix, connection, redis, lease, queue, add, settled, inputsOf, data };
}

/**
 * Records what goes over a client's socket: "w" for each write, "r" for each chunk
 * read. A single round trip shows as writes then reads, no write after a read.
 */
function wire(c: Redis) {
  const stream = (c as unknown as { stream: Socket }).stream;
  const events: ("w" | "r")[] = [];
  const write = stream.write;
  stream.write = ((...args: Parameters<Socket["write"]>) => {
    events.push("w");
    return write.apply(stream, args);
  }) as Socket["write"];
  const onData = () => events.push("r");
  stream.on("data", onData);
  return {
    events,
    stop() {
      stream.write = write;
      stream.off("data", onData);
    },
    /** Times the client sent something after it had read a reply: round trips past the first. */
    turns() {
      let turns = 0;
      for (let i = 1; i < events.length; i++) if (events[i] === "w" && events[i - 1] === "r") turns++;
      return events.length > 0 ? turns + 1 : 0;
    },
  };
}

/**
 * Commands a client sent, as Redis's MONITOR saw them (its own commands, not those run
 * inside scripts). A raw socket: the server is shared and busy, and only lines from the
 * watched client's port are kept.
 */
async function monitor(c: Redis) {
  const port = (c as unknown as { stream: Socket }).stream.localPort;
  const { hostname, port: redisPort } = new URL(url as string);
  const sock = connect(Number(redisPort || 6379), hostname || "127.0.0.1");
  const seen: string[] = [];
  const marker = `end-${randomBytes(4).toString("hex")}`;
  let buffered = "";
  let ended: () => void = () => {};
  const end = new Promise<void>((r) => {
    ended = r;
  });
  let ready: () => void = () => {};
  const started = new Promise<void>((r) => {
    ready = r;
  });
  sock.setEncoding("utf8");
  sock.on("data", (chunk: string) => {
    buffered += chunk;
    const lines = buffered.split("\r\n");
    buffered = lines.pop() ?? "";
    for (const line of lines) {
      if (line === "+OK") ready();
      const m = /^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]*)"(.*)$/.exec(line);
      if (!m || !m[1]?.endsWith(`:${port}`)) continue;
      if (m[3]?.includes(marker)) ended();
      else seen.push((m[2] ?? "").toLowerCase());
    }
  });
  sock.write("MONITOR\r\n");
  await started;
  return async () => {
    // MONITOR's feed lags the commands; a PING from the watched client marks the end.
    await c.ping(marker);
    await end;
    sock.destroy();
    return seen;
  };
}

describe("JobLease fetch", () => {
  it("takes up to n jobs in one script call and one round trip", async () => {
    const { connection, lease, add } = await setup();
    const ids = await add(10);
    const trace = wire(connection);
    const commands = await monitor(connection);
    const jobs = await lease.fetch(8);
    trace.stop();
    const sent = await commands();
    for (const j of jobs) expect(ids).toContain(j.id);
    expect(new Set(jobs.map((j) => j.id)).size).toBe(8);
    expect(lease.size).toBe(8);
    expect(sent).toEqual(["evalsha"]);
    expect(trace.turns()).toBe(1);
  });

  it("takes what waits when fewer than n do, and nothing (one call) from an empty queue", async () => {
    const { connection, lease, add } = await setup();
    await add(3);
    const commands = await monitor(connection);
    expect(await lease.fetch(8)).toHaveLength(3);
    expect(await lease.fetch(4)).toEqual([]);
    expect(await commands()).toEqual(["evalsha", "evalsha"]);
  });

  it("interleaves tenants' normal jobs by fair shares, first-come within each tenant", async () => {
    // A take that leaves jobs behind stores their tags; one that takes them all orders
    // them in memory. Both give pairs (equal shares), then a's backlog alone.
    for (const take of [[2, 6], [8]]) {
      const { lease, add } = await setup();
      const a = await add(6, "a", { priority: "normal" });
      const b = await add(2, "b", { priority: "normal" });
      const jobs: LeasedJob[] = [];
      for (const n of take) jobs.push(...(await lease.fetch(n)));
      const order = jobs.map((j) => j.id);
      expect(new Set(order.slice(0, 2))).toEqual(new Set([a[0], b[0]]));
      expect(new Set(order.slice(2, 4))).toEqual(new Set([a[1], b[1]]));
      expect(order.slice(4)).toEqual(a.slice(2));
      // Each job was locked with the token the worker holds for it: all settle.
      for (const j of jobs)
        expect(await lease.complete(j, JSON.stringify(result), j.data as JobData)).toBe("completed");
    }
  });

  it("puts a tenant that arrives behind another's backlog next in line, not behind all of it", async () => {
    const { lease, add } = await setup();
    const a = await add(40, "a", { priority: "normal" });
    expect((await lease.fetch(3)).map((j) => j.id)).toEqual(a.slice(0, 3));
    const [b] = await add(1, "b", { priority: "normal" });
    const next = (await lease.fetch(2)).map((j) => j.id);
    expect(new Set(next)).toEqual(new Set([a[3], b]));
    // The same when the take empties the queue: the newcomer's share starts at the queue's
    // virtual time (ordered in memory, beside a's stored tags).
    const [c] = await add(1, "c", { priority: "normal" });
    const all = (await lease.fetch(100)).map((j) => j.id);
    expect(new Set(all.slice(0, 2))).toEqual(new Set([a[4], c]));
    expect(all.slice(2)).toEqual(a.slice(5));
  });

  it("weighs a job by its samples: a 4-sample job counts as four", async () => {
    const { lease, add } = await setup();
    const [c] = await add(1, "c", { priority: "normal", batch: 4 });
    const a = await add(5, "a", { priority: "normal" });
    const order = (await lease.fetch(6)).map((j) => j.id);
    expect(order.slice(0, 3)).toEqual(a.slice(0, 3));
    expect(new Set(order.slice(3, 5))).toEqual(new Set([a[3], c]));
    expect(order[5]).toBe(a[4]);
  });

  it("takes high jobs first and low ones after every normal one, and forgets shares once the queue is empty", async () => {
    const { lease, add, redis, prefix } = await setup();
    const [low] = await add(1, "a", { priority: "low" });
    const [normal] = await add(1, "a", { priority: "normal" });
    const [high] = await add(1, "b", { priority: "high" });
    expect((await lease.fetch(3)).map((j) => j.id)).toEqual([high, normal, low]);
    expect(await lease.fetch(1)).toEqual([]);
    expect(await redis.exists(keys.bull(prefix, "m", "fair"))).toBe(0);
  });

  it("leaves a taken job as BullMQ's moveToActive does, and promotes delayed jobs whose time has come", async () => {
    const { connection, redis, lease, add, prefix, queue } = await setup();
    const [a, b] = await add(2);
    // a through BullMQ's own fetch (a second worker's getNextJob), b through takeJobs.
    const other = new Worker<JobData>(queueName("m"), null, {
      connection,
      prefix: queuePrefix(prefix, "m"),
      lockDuration: 30_000,
    });
    cleanups.push(() => other.close());
    const viaBull = await other.getNextJob("other-token", { block: false });
    expect(viaBull?.id).toBe(a);
    const [mine] = await lease.fetch(1);
    expect(mine?.id).toBe(b);
    const state = async (id: string) => {
      const { processedOn, ...hash } = await redis.hgetall(keys.job(prefix, "m", id));
      const events = (await redis.xrange(keys.bull(prefix, "m", "events"), "-", "+"))
        .map(([, f]) => f)
        .filter((f) => f[3] === id)
        .map((f) => f.join(" ").replaceAll(id, "<id>"));
      const lockTtl = await redis.pttl(`${keys.job(prefix, "m", id)}:lock`);
      return {
        fields: Object.keys(hash).sort(),
        ats: hash.ats,
        stamped: Number(processedOn) > 0,
        active: (await redis.lrange(keys.bull(prefix, "m", "active"), 0, -1)).includes(id),
        locked: lockTtl > 25_000,
        events,
      };
    };
    expect(await state(b as string)).toEqual(await state(a as string));
    // What the lease hands over is what BullMQ's Job says of the same fields.
    expect(mine?.data).toEqual(viaBull?.data);
    expect(mine?.attemptsMade).toBe(viaBull?.attemptsMade);
    expect(mine?.opts.attempts).toBe(viaBull?.opts.attempts);
    expect(mine?.stacktrace).toBe(JSON.stringify(viaBull?.stacktrace));
    expect(mine?.deferredFailure).toBeNull();
    const mineInBull = await Job.fromId(queue, b as string);
    expect(mine?.createdAt).toBe(mineInBull?.timestamp);
    expect(mine?.startedAt).toBe(mineInBull?.processedOn);
    // A retry waiting out its backoff in the delayed set comes back once its time has come.
    await queue.add(JOB_NAME, (mine as LeasedJob).data as JobData, { jobId: "m.delayedjob0000000000", delay: 1 });
    await sleep(20);
    const [promoted] = await lease.fetch(4);
    expect(promoted?.id).toBe("m.delayedjob0000000000");
    expect(await queue.getJobState("m.delayedjob0000000000")).toBe("active");
  });

  it("hands over a job whose stored data is not JSON with no data, beside the others", async () => {
    const { redis, lease, add, prefix } = await setup();
    const [bad, good] = (await add(2)) as [string, string];
    await redis.hset(keys.job(prefix, "m", bad), "data", "{not json");
    const jobs = await lease.fetch(2);
    expect(jobs.map((l) => [l.id, l.data === null])).toEqual([
      [bad, true],
      [good, false],
    ]);
  });

  it("leaves large inputs out of the take and reads them after it with one MGET", async () => {
    const { connection, redis, lease, queue, data, prefix } = await setup();
    const big = randomBytes(100_000);
    const ids = ["m.largeinputs000000000a", "m.largeinputs000000000b"];
    await queue.addBulk(
      ids.map((id, i) => ({
        name: JOB_NAME,
        data: { ...data("t"), inputBytes: i === 0 ? big.length : 4 },
        opts: { jobId: id },
      })),
    );
    await redis.set(keys.inputs(prefix, "m", ids[0] as string), big);
    await redis.set(keys.inputs(prefix, "m", ids[1] as string), Buffer.from([1, 2, 3, 4]));
    const commands = await monitor(connection);
    const jobs = await lease.fetch(2);
    expect(await commands()).toEqual(["evalsha", "mget"]);
    expect(jobs.map((l) => l.id)).toEqual(ids);
    expect(jobs[0]?.inputs?.equals(big)).toBe(true);
    expect(jobs[1]?.inputs?.toString("hex")).toBe("01020304");
    // The large one in a buffer of its own, not a slice of the parser's shared pool: the
    // batch frees it when it is over, and a lone job's run takes it uncopied (release.ts).
    expect(jobs[0]?.inputs?.byteOffset).toBe(0);
    expect(jobs[0]?.inputs?.buffer.byteLength).toBe(big.length);
    release(jobs[0]?.inputs);
    expect(jobs[0]?.inputs?.length).toBe(0);
  });

  it("falls back to BullMQ's own fetch for a queue with a global concurrency (not implemented by takeJobs)", async () => {
    const { connection, lease, add, queue } = await setup();
    await queue.setGlobalConcurrency(100);
    await add(3);
    const commands = await monitor(connection);
    const jobs = await lease.fetch(8);
    expect(jobs).toHaveLength(3);
    // Their inputs and cancel flags read after them, in one MGET.
    expect(jobs.map((l) => [l.inputs?.toString("hex"), l.cancelRequested])).toEqual(
      Array.from({ length: 3 }, () => ["01020304", false]),
    );
    // The first moveToActive on this connection sends its script (EVAL), then its SHA.
    const sent = (await commands()).map((c) => (c === "eval" ? "evalsha" : c));
    expect(sent).toEqual(["evalsha", "llen", "zcard", "evalsha", "evalsha", "evalsha", "mget"]);
  });

  it("waits for a job on the queue's marker (BZPOPMIN) instead of polling, and wakes when one is added", async () => {
    const { connection, redis, lease, add, prefix } = await setup();
    // Only this queue's blocking connection (named after the queue's prefix): other
    // test files' workers block on the same server.
    const ours = (line: string) => line.includes("cmd=bzpopmin") && line.includes(prefix.slice(1, -1));
    // A marker left by earlier adds wakes the wait once: it takes nothing and blocks again.
    const waiting = lease.next();
    let blocked = false;
    for (let i = 0; i < 500 && !blocked; i++) {
      blocked = String(await redis.client("LIST"))
        .split("\n")
        .some(ours);
      if (!blocked) await sleep(10);
    }
    expect(blocked).toBe(true);
    // The wait is a BZPOPMIN on another connection; until a job comes, this one is silent.
    const commands = await monitor(connection);
    await sleep(50);
    const before = await commands();
    expect(before).toEqual([]);
    const [id] = await add(1);
    const got = await waiting;
    expect(got.map((l) => l.id)).toEqual([id]);
    expect(lease.next()).toBe(lease.next());
  });

  it("wakes for a delayed job (a retry waiting out its backoff) once it is due", async () => {
    const { lease, queue, data } = await setup();
    const waiting = lease.next();
    const addedAt = Date.now();
    await queue.add(JOB_NAME, data("t"), { jobId: "m.delayedwakeup0000000", delay: 300 });
    const got = await waiting;
    expect(got.map((l) => l.id)).toEqual(["m.delayedwakeup0000000"]);
    expect(Date.now() - addedAt).toBeGreaterThanOrEqual(290);
  });

  it("takes a retried job back once its backoff is over, waiting for it without spinning", async () => {
    // A backoff longer than one wait (blockSeconds 5): the delay marker is remembered, not
    // popped again and again (a worker once spun ~8,000 waits a second until the job was due).
    const { lease, add } = await setup({ attempts: 2, backoffMs: 6500 });
    const [id] = await add(1);
    const [first] = await lease.fetch(1);
    expect(await lease.fail(first as LeasedJob, new CitadelError("RUNTIME_ERROR", "boom"), null)).toEqual({
      final: false,
    });
    const failedAt = Date.now();
    let again: LeasedJob[] = [];
    let waits = 0;
    while (again.length === 0 && Date.now() - failedAt < 20_000) {
      waits++;
      again = await lease.next();
    }
    expect(again.map((l) => l.id)).toEqual([id]);
    expect(Date.now() - failedAt).toBeGreaterThanOrEqual(6400);
    expect(waits).toBeLessThanOrEqual(3);
  });

  it("learns when a delayed job is due from a take that found nothing (its marker gone)", async () => {
    // A wait far longer than the delay: a lease that did not learn when the job is due
    // would wait it out (30 s) and come back empty-handed. The delay leaves the take below
    // seconds to run before the job is due, on a loaded machine too.
    const { redis, lease, queue, data, prefix } = await setup({ blockSeconds: 30 });
    await queue.add(JOB_NAME, data("t"), { jobId: "m.delayednomarker00000", delay: 3000 });
    // Another worker consumed the delay marker: only the delayed set says when.
    await redis.del(keys.bull(prefix, "m", "marker"));
    expect(await lease.fetch(4)).toEqual([]);
    const started = Date.now();
    const got = await lease.next();
    expect(got.map((l) => l.id)).toEqual(["m.delayednomarker00000"]);
    // Woken when the job was due (≈3 s), not at the end of the 30 s wait.
    expect(Date.now() - started).toBeLessThan(15_000);
  }, 60_000);

  it("hands over each job's input bytes and cancel flag with the take, in its one round trip", async () => {
    const { connection, redis, lease, add, prefix } = await setup();
    const [first, second, third] = (await add(3)) as [string, string, string];
    await redis.del(keys.inputs(prefix, "m", second));
    await redis.set(keys.cancelRequested(prefix, third), "1");
    // Bytes that are not UTF-8 come back as they are.
    await redis.set(keys.inputs(prefix, "m", first), Buffer.from([0xff, 0xfe, 0x00, 0x80]));
    const trace = wire(connection);
    const jobs = await lease.fetch(3);
    trace.stop();
    expect(trace.turns()).toBe(1);
    const byId = new Map(jobs.map((l) => [l.id, l]));
    expect([first, second, third].map((id) => byId.get(id)?.inputs?.toString("hex") ?? null)).toEqual([
      "fffe0080",
      null,
      "01020304",
    ]);
    expect([first, second, third].map((id) => byId.get(id)?.cancelRequested)).toEqual([false, false, true]);
  });
});

describe("JobLease settle", () => {
  it("settles a batch in one script call: final states, an outbox entry each, inputs dropped", async () => {
    const { connection, redis, lease, queue, add, settled, inputsOf } = await setup();
    await add(6);
    const jobs = await lease.fetch(6);
    expect(await settled()).toEqual({});
    const trace = wire(connection);
    const outcomes = await Promise.all(
      jobs.map((l, i) =>
        i < 4
          ? lease.complete(l, JSON.stringify(result), l.data as JobData)
          : lease.fail(l, new CitadelError("JOB_INVALID", "bad input"), l.data as JobData),
      ),
    );
    trace.stop();
    expect(trace.turns()).toBe(1);
    expect(trace.events.filter((e) => e === "w")).toHaveLength(1);
    expect(outcomes).toEqual(["completed", "completed", "completed", "completed", { final: true }, { final: true }]);
    expect(lease.size).toBe(0);
    for (const [i, l] of jobs.entries()) {
      expect(await queue.getJobState(l.id)).toBe(i < 4 ? "completed" : "failed");
      expect(await redis.exists(inputsOf(l))).toBe(0);
      const stored = await queue.getJob(l.id);
      if (i >= 4) expect(stored?.failedReason).toBe("JOB_INVALID: bad input");
      else {
        // The result carries the job's times exactly as BullMQ recorded them (a waiter builds its view from the event).
        expect(stored?.returnvalue).toEqual({
          ...result,
          at: { created: stored?.timestamp, started: stored?.processedOn, finished: stored?.finishedOn },
        });
      }
    }
    expect(await settled()).toEqual(Object.fromEntries(jobs.map((l, i) => [l.id, i < 4 ? "completed" : "failed"])));
  });

  it("settles a completion whose job was flagged for cancel meanwhile as cancelled, in the same call", async () => {
    const { connection, redis, lease, queue, add, settled, inputsOf, prefix } = await setup();
    await add(2);
    const [flagged, other] = (await lease.fetch(2)) as [LeasedJob, LeasedJob];
    // The API's DELETE while the job ran, its message lost: only the flag says so.
    await redis.set(keys.cancelRequested(prefix, flagged.id), "1");
    const trace = wire(connection);
    const outcomes = await Promise.all(
      [flagged, other].map((l) => lease.complete(l, JSON.stringify(result), l.data as JobData)),
    );
    trace.stop();
    expect(trace.turns()).toBe(1);
    expect(outcomes).toEqual(["cancelled", "completed"]);
    expect(await queue.getJobState(flagged.id)).toBe("failed");
    const stored = await queue.getJob(flagged.id);
    expect(stored?.failedReason).toBe("CANCELLED: the job was cancelled");
    expect(stored?.returnvalue ?? null).toBeNull();
    expect(await redis.exists(inputsOf(flagged))).toBe(0);
    expect(await settled()).toEqual({ [flagged.id]: "cancelled", [other.id]: "completed" });
  });

  it("retries a transient failure through BullMQ, keeping its inputs and quota share (no outbox entry)", async () => {
    const { redis, lease, queue, add, settled, inputsOf } = await setup({ attempts: 2 });
    await add(2);
    const [a, b] = (await lease.fetch(2)) as [LeasedJob, LeasedJob];
    const [ra, rb] = await Promise.all([
      lease.fail(a, new CitadelError("RUNTIME_ERROR", "inference failed"), a.data as JobData),
      lease.fail(b, new CitadelError("JOB_INVALID", "bad input"), b.data as JobData),
    ]);
    expect(ra).toEqual({ final: false });
    expect(rb).toEqual({ final: true });
    expect(await queue.getJobState(a.id)).toBe("delayed");
    expect(await redis.exists(inputsOf(a))).toBe(1);
    expect(await queue.getJobState(b.id)).toBe("failed");
    expect(await settled()).toEqual({ [b.id]: "failed" });
  });

  it("answers a job whose lock was lost alone: not settled, its inputs and quota share kept", async () => {
    const { redis, lease, queue, add, settled, inputsOf, prefix } = await setup();
    await add(3);
    const jobs = (await lease.fetch(3)) as [LeasedJob, LeasedJob, LeasedJob];
    const lost = jobs[1];
    // Another worker took it over: its lock now holds another token.
    await redis.set(`${keys.job(prefix, "m", lost.id)}:lock`, "someone-else");
    logLines.length = 0;
    const outcomes = await Promise.all(jobs.map((l) => lease.complete(l, JSON.stringify(result), l.data as JobData)));
    expect(outcomes).toEqual(["completed", null, "completed"]);
    expect(logLines.join("")).toMatch(/could not complete job \(lock lost\)/);
    expect(await queue.getJobState(lost.id)).toBe("active");
    expect(await redis.exists(inputsOf(lost))).toBe(1);
    expect(await settled()).toEqual({ [jobs[0].id]: "completed", [jobs[2].id]: "completed" });
    expect(lease.holds(lost.id)).toBe(false);
  });
});

describe("finishJobs-9.lua against BullMQ's own scripts", () => {
  /** A job's traces after settling: its hash fields, its sets, its events and its outbox entry (times blanked). */
  async function traces(redis: Redis, prefix: string, id: string) {
    const bull = (part: string) => keys.bull(prefix, "m", part);
    const hash = await redis.hgetall(keys.job(prefix, "m", id));
    const fields = Object.keys(hash).sort();
    // stacktrace: BullMQ records the Error's stack it is given; the lease has none to give
    // (Citadel's jobs keep none: stackTraceLimit 0) and writes the job's own, "[]".
    const { finishedOn, processedOn, timestamp, returnvalue, stacktrace, ...kept } = hash;
    const events = (await redis.xrange(bull("events"), "-", "+"))
      .map(([, f]) => f)
      .filter((f) => f[3] === id)
      .map((f) => f.map((v) => (v === returnvalue || v === finishedOn ? "<same>" : v)));
    const outbox = (await redis.xrange(keys.outbox(prefix, "m"), "-", "+"))
      .map(([, f]) => f)
      .filter((f) => f[1] === id)
      .map((f) => f.map((v, i) => (f[i - 1] === "f" || f[i - 1] === "r" ? "<time>" : v)));
    return {
      fields,
      kept,
      // The result as stored (its finish time aside): one JSON encoding, not two.
      result: returnvalue === undefined ? null : { ...JSON.parse(returnvalue), at: "<at>" },
      finishedOnIsMember:
        Number(await redis.zscore(bull(hash.failedReason ? "failed" : "completed"), id)) === Number(finishedOn),
      active: (await redis.lrange(bull("active"), 0, -1)).includes(id),
      stalled: await redis.sismember(bull("stalled"), id),
      lock: await redis.exists(`${keys.job(prefix, "m", id)}:lock`),
      inputs: await redis.exists(keys.inputs(prefix, "m", id)),
      events,
      outbox,
    };
  }

  it("leaves a completed and a failed job exactly as moveToFinished followed by settleFinal does", async () => {
    const { redis, lease, queue, add, prefix } = await setup();
    await add(4);
    const [a, b, c, d] = (await lease.fetch(4)) as [LeasedJob, LeasedJob, LeasedJob, LeasedJob];
    // a and c through BullMQ's public calls and settleFinal; b and d through the lease's finishJobs.
    const settleFinal = (l: LeasedJob) => {
      const call = settleFinalCall(prefix, "m", l.id, l.data as JobData);
      return scripts(redis).settleFinal(call.keys, call.args);
    };
    const stamped = (l: LeasedJob): JobResult => ({
      ...result,
      at: { created: l.createdAt, started: l.startedAt, finished: 0 },
    });
    const bullJob = async (l: LeasedJob) => {
      const job = await Job.fromId<JobData>(queue, l.id);
      if (!job) throw new Error(`job ${l.id} is gone`);
      return job;
    };
    await (await bullJob(a)).moveToCompleted(stamped(a), a.token, false);
    expect(await settleFinal(a)).toBe(1);
    expect(await lease.complete(b, JSON.stringify(result), b.data as JobData)).toBe("completed");
    await (await bullJob(c)).moveToFailed(new Error("JOB_INVALID: bad input"), c.token, false);
    expect(await settleFinal(c)).toBe(1);
    expect(await lease.fail(d, new CitadelError("JOB_INVALID", "bad input"), d.data as JobData)).toEqual({
      final: true,
    });
    const [ta, tb, tc, td] = await Promise.all([a, b, c, d].map((l) => traces(redis, prefix, l.id)));
    const sameAs = (t: typeof ta, id: string, other: string) =>
      JSON.parse(JSON.stringify(t).replaceAll(id, "<id>").replaceAll(other, "<id>"));
    expect(sameAs(tb as typeof ta, b.id, b.id)).toEqual(sameAs(ta as typeof ta, a.id, a.id));
    expect(sameAs(td as typeof ta, d.id, d.id)).toEqual(sameAs(tc as typeof ta, c.id, c.id));
    expect(ta?.events.map((e) => e[1])).toEqual(["added", "waiting", "active", "completed"]);
    expect(tc?.events.map((e) => e[1])).toEqual(["added", "waiting", "active", "failed", "retries-exhausted"]);
    expect(tb).toMatchObject({ finishedOnIsMember: true, active: false, stalled: 0, lock: 0, inputs: 0 });
    expect(await redis.hget(keys.job(prefix, "m", d.id), "stacktrace")).toBe("[]");
  });
});

describe("JobLease close", () => {
  it("ends a pending blocking fetch and returns held jobs to the queue", async () => {
    const { lease, add, queue } = await setup();
    await add(2);
    const jobs = await lease.fetch(2);
    const waiting = lease.next();
    await lease.close();
    expect(await waiting).toEqual([]);
    for (const l of jobs) expect(await queue.getJobState(l.id)).toBe("waiting");
  });
});
