/**
 * The reliability suite's duplicate counter (test/reliability/witness.ts) can fail: it
 * counts what Redis executes, so a second job for one logical request, a job stored
 * twice and a job completed twice all show; and what Redis ran in its last instant
 * before a SIGKILL is read back after the restart. Jobs are told apart by their stored
 * input bytes, read from the feed's escaped text.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { keys, queueName, queuePrefix } from "@citadel/queue";
import { type Job, Queue, Worker } from "bullmq";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { haveRedisServer, type OwnRedis, startOwnRedis } from "../bench/harness.js";
import { RedisWitness } from "../reliability/witness.js";

let redis: OwnRedis;
let witness: RedisWitness;
const closers: (() => Promise<void>)[] = [];

beforeAll(async () => {
  expect(haveRedisServer(), "redis-server must be installed").toBe(true);
  redis = await startOwnRedis({ aof: true });
  witness = await RedisWitness.attach(redis);
});
afterAll(async () => {
  for (const c of closers.reverse()) await c();
  await witness?.close();
  await redis?.close();
});

async function until(what: string, cond: () => boolean): Promise<void> {
  const end = Date.now() + 20_000;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A queue and a hand-driven worker under a fresh prefix, as Citadel's API and workers use BullMQ. */
function bull() {
  const prefix = `{w-${randomBytes(3).toString("hex")}}`;
  const connection = new Redis(redis.url, { maxRetriesPerRequest: null });
  const queue = new Queue(queueName("m"), { connection, prefix: queuePrefix(prefix, "m") });
  const worker = new Worker(queueName("m"), null, { connection, prefix: queuePrefix(prefix, "m"), autorun: false });
  // The last test SIGKILLs Redis on purpose: connection errors until it is back are expected.
  const expected = (err: Error) => expect(err.message).toMatch(/ECONNREFUSED|ECONNRESET|Connection is closed/);
  connection.on("error", expected);
  queue.on("error", expected);
  worker.on("error", expected);
  closers.push(async () => {
    await worker.close();
    await queue.close();
    connection.disconnect();
  });
  // As Citadel's API adds a job: its input bytes (here the nonce, with bytes MONITOR escapes) first.
  const add = async (id: string, nonce: string) => {
    await connection.set(keys.inputs(prefix, "m", id), Buffer.concat([Buffer.from(nonce), NOISE]));
    return queue.add("job", {}, { jobId: id });
  };
  const completeNext = async (): Promise<Job> => {
    const token = randomUUID();
    const job = (await worker.getNextJob(token, { block: false })) as Job | undefined;
    if (!job) throw new Error("no job to take");
    await job.moveToCompleted("ok", token, false);
    return job;
  };
  return { prefix, queue, add, completeNext };
}

/** Bytes MONITOR prints escaped (quote, backslash, controls, high bytes): the witness must read them back exactly. */
const NOISE = Buffer.from([0x22, 0x5c, 0x00, 0x0a, 0x0d, 0x09, 0x07, 0x08, 0xff, 0x80, 0x20, 0x22, 0x20, 0x22]);
const nonceOf = (inputs: Buffer) =>
  inputs.subarray(-NOISE.length).equals(NOISE) ? inputs.subarray(0, -NOISE.length).toString() : undefined;

describe("the reliability suite's witness (Redis MONITOR)", () => {
  it("counts a second job for one logical request, a job stored twice and a job completed twice", async () => {
    const b = bull();
    const scope = witness.scope(b.prefix, ["m"], nonceOf);
    await b.add("m.first", "request-1");
    await b.add("m.second", "request-1"); // a retry that made a second job
    await b.add("m.first", "request-1"); // re-adding an existing id stores nothing
    const done = await b.completeNext();
    await b.completeNext();
    await done.remove();
    await b.add("m.first", "request-1"); // stored again after it ended: it will run twice
    await b.completeNext();
    await until("the feed to catch up", () => (scope.completed.get("m.first") ?? 0) >= 2);
    expect([...(scope.idsByLogical.get("request-1") ?? [])].sort()).toEqual(["m.first", "m.second"]);
    expect(scope.stored.get("m.first")).toBe(2);
    expect(scope.stored.get("m.second")).toBe(1);
    expect(scope.completed.get("m.first")).toBe(2);
    expect(scope.completed.get("m.second")).toBe(1);
    scope.close();
  });

  it("sees only its own prefix", async () => {
    const mine = bull();
    const other = bull();
    const scope = witness.scope(mine.prefix, ["m"], nonceOf);
    await other.add("m.elsewhere", "request-9");
    await mine.add("m.here", "request-8");
    await until("the feed to catch up", () => scope.stored.has("m.here"));
    expect([...scope.stored.keys()]).toEqual(["m.here"]);
    scope.close();
  });

  it("reads back, after a restart, what Redis ran while no MONITOR line reached it", async () => {
    const b = bull();
    const scope = witness.scope(b.prefix, ["m"], nonceOf);
    await b.add("m.seen", "request-1");
    await until("the feed to catch up", () => scope.stored.has("m.seen"));
    // Blind: as when Redis is SIGKILLed before it sent the MONITOR lines of its last writes.
    await witness.close();
    await b.add("m.unseen", "request-2");
    await b.completeNext();
    await redis.stop("SIGKILL");
    await redis.start();
    expect(scope.unseen).toEqual({ stored: 1, completed: 1 });
    expect(scope.logicalById.get("m.unseen")).toBe("request-2");
    expect(scope.completed.get("m.seen")).toBe(1);
    // And it watches again: a completion after the restart is counted once.
    await b.completeNext();
    await until("the feed to catch up", () => scope.completed.has("m.unseen"));
    expect(scope.completed.get("m.unseen")).toBe(1);
    scope.close();
  });
});
