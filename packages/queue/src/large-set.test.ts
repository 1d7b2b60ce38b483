import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { setInPlace } from "./large-set.js";

// The in-place SET against the real Redis the run shares, under keys of this file's own.
// Through a Redis Cluster it is exercised by test/e2e/cluster.test.ts (PaddleOCR inputs
// are past jobs.ts's LARGE_INPUT_BYTES).

const prefix = `large-set-${randomBytes(4).toString("hex")}`;
let redis: Redis;

beforeAll(async () => {
  redis = new Redis(inject("redisUrl"));
  await redis.ping();
});
afterAll(async () => {
  const found = await redis.keys(`${prefix}:*`);
  if (found.length) await redis.unlink(...found);
  await redis.quit();
});

/** Records what is written to the connection's socket while `work` runs. */
async function writesDuring(conn: Redis, work: () => Promise<unknown>): Promise<unknown[]> {
  const socket = conn.stream as NodeJS.WritableStream;
  const write = socket.write;
  const seen: unknown[] = [];
  socket.write = function (this: NodeJS.WritableStream, chunk: unknown, ...rest: unknown[]) {
    seen.push(chunk);
    return (write as (...a: unknown[]) => boolean).call(this, chunk, ...rest);
  } as typeof socket.write;
  try {
    await work();
  } finally {
    socket.write = write;
  }
  return seen;
}

describe("setInPlace", () => {
  it("stores the bytes exactly, with the options after them", async () => {
    const value = randomBytes(1_800_000);
    const at = Date.now() + 60_000;
    expect(await setInPlace(redis, `${prefix}:a`, value, "PXAT", at)).toBe("OK");
    expect((await redis.getBuffer(`${prefix}:a`))?.equals(value)).toBe(true);
    expect(await redis.pexpiretime(`${prefix}:a`)).toBe(at);
  });

  it("writes the caller's buffer itself to the socket, where a plain SET writes a copy", async () => {
    const value = randomBytes(300_000);
    const inPlace = await writesDuring(redis, () => setInPlace(redis, `${prefix}:b`, value));
    expect(inPlace.filter((c) => c === value)).toHaveLength(1);
    const plain = await writesDuring(redis, () => redis.set(`${prefix}:c`, value));
    expect(plain.some((c) => c === value)).toBe(false);
    expect(plain.some((c) => Buffer.isBuffer(c) && c.length > value.length)).toBe(true);
  });

  it("keeps the connection's order with commands sent around it without waiting", async () => {
    const value = randomBytes(2_000_000);
    const before = redis.set(`${prefix}:d`, "before");
    const set = setInPlace(redis, `${prefix}:d`, value, "PX", 60_000);
    const read = redis.getBuffer(`${prefix}:d`);
    const other = redis.incr(`${prefix}:n`);
    const [b, s, r, n] = await Promise.all([before, set, read, other]);
    expect([b, s, n]).toEqual(["OK", "OK", 1]);
    expect(r?.equals(value)).toBe(true);
  });

  it("is written once the connection is up when it was sent before (ioredis's offline queue)", async () => {
    const late = new Redis(inject("redisUrl"), { lazyConnect: true });
    try {
      const value = randomBytes(500_000);
      const set = setInPlace(late, `${prefix}:e`, value);
      const read = late.getBuffer(`${prefix}:e`);
      expect(late.status).not.toBe("ready");
      expect(await set).toBe("OK");
      expect((await read)?.equals(value)).toBe(true);
    } finally {
      await late.quit();
    }
  });

  it("takes an empty value", async () => {
    expect(await setInPlace(redis, `${prefix}:f`, Buffer.alloc(0))).toBe("OK");
    expect(await redis.strlen(`${prefix}:f`)).toBe(0);
  });
});
