import { createHash, randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuditKey, AuditWriter, auditHeadsKey, auditStreamKey, createAuditAnchor, verifyAuditStream } from "./index.js";

// The unit project's globalSetup starts (or finds) one Redis and exports its URL.
const url = process.env.CITADEL_TEST_REDIS_URL;
if (!url) throw new Error("CITADEL_TEST_REDIS_URL is not set: run through vitest's unit project");
let redis: Redis;
const prefixes: string[] = [];
const silent = { info: () => undefined, error: () => undefined };

beforeAll(() => {
  redis = new Redis(url);
});
afterAll(async () => {
  for (const p of prefixes) await redis.del(auditStreamKey(p), auditHeadsKey(p));
  await redis.quit();
});

function freshPrefix(): string {
  const p = `{audit-${randomBytes(5).toString("hex")}}`;
  prefixes.push(p);
  return p;
}

const newKey = (role?: string) => new AuditKey(randomBytes(32), role);

function writer(prefix: string, name: string, key: AuditKey): AuditWriter {
  return new AuditWriter(redis, prefix, name, silent, key);
}
const verify = (prefix: string, keys: AuditKey[]) => verifyAuditStream(redis, prefix, keys);

async function writeRecords(w: AuditWriter, n: number, from = 0): Promise<void> {
  for (let i = 0; i < n; i++) w.record("job.completed", { jobId: `job-${from + i}`, outcome: "completed" });
  await w.flush(10_000);
}

async function entries(prefix: string): Promise<{ id: string; rec: Record<string, unknown> }[]> {
  const rows = await redis.xrange(auditStreamKey(prefix), "-", "+");
  return rows.map(([id, f]) => ({ id, rec: JSON.parse(f[1] ?? "{}") as Record<string, unknown> }));
}

/** What the unkeyed chain used: SHA-256 over the record with its keys sorted. */
function sha256Record(body: Record<string, unknown>): string {
  const sorted = Object.fromEntries(Object.entries(body).sort(([a], [b]) => (a < b ? -1 : 1)));
  return createHash("sha256").update(JSON.stringify(sorted)).digest("hex");
}

describe("keyed audit chain", () => {
  it("catches a tail rewritten with recomputed SHA-256 hashes and head, even in a rebuilt stream", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const w = writer(prefix, "api", key);
    await writeRecords(w, 10);
    const all = await entries(prefix);
    // The attacker rewrites the last three records (an outcome flipped), recomputes each
    // hash and link, and rebuilds the whole stream with the original ids so that no XDEL
    // shows: deletion counters are those of a stream that was never touched.
    let prev = all[6]?.rec.hash as string;
    const forged = all.map(({ id, rec }, i) => {
      if (i < 7) return { id, rec };
      const { hash: _old, ...body } = rec;
      const edited = { ...body, prev, outcome: "failed" };
      prev = sha256Record(edited);
      return { id, rec: { ...edited, hash: prev } };
    });
    await redis.del(auditStreamKey(prefix));
    for (const { id, rec } of forged) await redis.xadd(auditStreamKey(prefix), id, "r", JSON.stringify(rec));
    const head = (await redis.hget(auditHeadsKey(prefix), w.writer)) ?? "";
    await redis.hset(auditHeadsKey(prefix), w.writer, ["10", prev, ...head.split(":").slice(2)].join(":"));
    const r = await verify(prefix, [key]);
    expect(r.ok).toBe(false);
    expect(r.problems.join("\n")).toMatch(/#8 was edited/);
    expect(r.problems.join("\n")).toMatch(/head/);
  });

  it("catches a writer's first records deleted with XDEL from a stream that was also trimmed", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const a = writer(prefix, "api", key);
    const b = writer(prefix, "worker", key);
    await writeRecords(a, 3);
    await writeRecords(b, 5);
    await writeRecords(a, 5, 3);
    // Honest trimming of the oldest three (a#1..a#3), then b's first two deleted.
    await redis.xtrim(auditStreamKey(prefix), "MAXLEN", 10);
    const bs = (await entries(prefix)).filter((e) => e.rec.writer === b.writer);
    await redis.xdel(auditStreamKey(prefix), bs[0]?.id ?? "", bs[1]?.id ?? "");
    const r = await verify(prefix, [key]);
    expect(r.ok).toBe(false);
    expect(r.problems.join("\n")).toMatch(/XDEL/);
    expect(r.problems.join("\n")).toMatch(new RegExp(`${b.writer} starts at #3`));
  });

  it("catches a whole writer deleted from the middle of the stream, head and all", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const a = writer(prefix, "api", key);
    const b = writer(prefix, "worker", key);
    await writeRecords(a, 4);
    await writeRecords(b, 3);
    await writeRecords(a, 4, 4);
    for (const e of (await entries(prefix)).filter((x) => x.rec.writer === b.writer))
      await redis.xdel(auditStreamKey(prefix), e.id);
    await redis.hdel(auditHeadsKey(prefix), b.writer);
    const r = await verify(prefix, [key]);
    expect(r.ok).toBe(false);
    expect(r.problems.join("\n")).toMatch(/XDEL/);
  });

  it("reports every record when verified with the wrong key", async () => {
    const prefix = freshPrefix();
    const w = writer(prefix, "api", newKey());
    await writeRecords(w, 4);
    const r = await verify(prefix, [newKey()]);
    expect(r.ok).toBe(false);
    expect(r.problems.filter((p) => /^\d+-\d+: \S+#\d is keyed with an unknown key/.test(p))).toHaveLength(4);
    expect(r.problems.filter((p) => /head #4 is keyed with an unknown key/.test(p))).toHaveLength(1);
  });

  it("accepts honest trimming alone", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const a = writer(prefix, "api", key);
    const b = writer(prefix, "worker", key);
    await writeRecords(a, 5);
    await writeRecords(b, 5);
    await writeRecords(a, 5, 5);
    await redis.xtrim(auditStreamKey(prefix), "MAXLEN", 7);
    const r = await verify(prefix, [key]);
    expect(r.problems).toEqual([]);
    expect(r.records).toBe(7);
  });

  it("binds each key to its role: a worker's key cannot write an API writer's records", async () => {
    const prefix = freshPrefix();
    const api = newKey("api");
    const worker = newKey("worker");
    await writeRecords(writer(prefix, "api", api), 2);
    await writeRecords(writer(prefix, "worker", worker), 2);
    expect((await verify(prefix, [api, worker])).problems).toEqual([]);
    // A broken worker container holds the worker key and poses as the API.
    const posing = writer(prefix, "api", worker);
    await writeRecords(posing, 2);
    const r = await verify(prefix, [api, worker]);
    expect(r.problems.filter((p) => p.includes(`${posing.writer}#`) && /the worker key/.test(p))).toHaveLength(2);
    expect(r.problems).toContain(`${posing.writer}: head is keyed with the worker key (another role's)`);
  });

  it("reports records written without a key (the old, unkeyed form)", async () => {
    const prefix = freshPrefix();
    const body = { writer: "api:x", seq: 1, prev: "0", ts: new Date().toISOString(), event: "job.completed" };
    await redis.xadd(auditStreamKey(prefix), "*", "r", JSON.stringify({ ...body, hash: sha256Record(body) }));
    await redis.hset(auditHeadsKey(prefix), "api:x", `1:${sha256Record(body)}`);
    const r = await verify(prefix, [newKey()]);
    expect(r.problems).toEqual([
      "api:x: head is not in the keyed form (forged, or written before audit keys)",
      expect.stringMatching(/api:x#1 carries no key id/),
      expect.stringMatching(/api:x#1 has a wrong genesis link/),
    ]);
  });
});

describe("anchors kept outside Redis", () => {
  it("an honest stream still extends its anchor after more records and trimming", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const a = writer(prefix, "api", key);
    const b = writer(prefix, "worker", key);
    await writeRecords(a, 3);
    await writeRecords(b, 3);
    const { report, anchor } = await createAuditAnchor(redis, prefix, [], key);
    expect(report.problems).toEqual([]);
    expect(anchor?.heads[a.writer]).toMatchObject({ seq: 3 });
    expect(anchor?.entriesAdded).toBe(6);
    await writeRecords(a, 5, 3);
    await writeRecords(b, 2, 3);
    const later = await verify(prefix, [key]).then(() =>
      verifyAuditStream(redis, prefix, [key], { anchor: JSON.parse(JSON.stringify(anchor)) }),
    );
    expect(later.problems).toEqual([]);
    // Trimming past an anchored record is what MAXLEN does: noted, not a problem.
    await redis.xtrim(auditStreamKey(prefix), "MAXLEN", 4);
    const trimmed = await verifyAuditStream(redis, prefix, [key], { anchor });
    expect(trimmed.problems).toEqual([]);
    expect(trimmed.notes.join("\n")).toMatch(new RegExp(`${a.writer}#3 \\(anchored at .*\\) has since been trimmed`));
  });

  it("catches a tail cut back to an older, genuine head in a rebuilt stream", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const w = writer(prefix, "api", key);
    await writeRecords(w, 5);
    const oldHead = (await redis.hget(auditHeadsKey(prefix), w.writer)) ?? "";
    await writeRecords(w, 5, 5);
    const { anchor } = await createAuditAnchor(redis, prefix, [], key);
    // The attacker rebuilds the stream without #6..#10 (no XDEL shows), restores the
    // head value they saw earlier and sets the counter back to what it was.
    const keep = (await entries(prefix)).slice(0, 5);
    await redis.del(auditStreamKey(prefix));
    for (const { id, rec } of keep) await redis.xadd(auditStreamKey(prefix), id, "r", JSON.stringify(rec));
    const last = keep.at(-1)?.id ?? "0-0";
    await redis.call("XSETID", auditStreamKey(prefix), last, "ENTRIESADDED", "10");
    await redis.hset(auditHeadsKey(prefix), w.writer, oldHead);
    const r = await verifyAuditStream(redis, prefix, [key], { anchor });
    expect(r.ok).toBe(false);
    expect(r.problems).toContain(`${w.writer}: head went back from anchored #10 to #5`);
    expect(r.problems.join("\n")).toMatch(new RegExp(`${w.writer}#10 \\(anchored at .*\\) is missing`));
    expect(r.problems.join("\n")).toMatch(/the last id went back/);
  });

  it("catches a writer removed whole, and an anchor edited or keyed by a stranger", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const a = writer(prefix, "api", key);
    const b = writer(prefix, "worker", key);
    await writeRecords(a, 3);
    await writeRecords(b, 3);
    await writeRecords(a, 2, 3);
    const { anchor } = await createAuditAnchor(redis, prefix, [], key);
    if (!anchor) throw new Error("no anchor");
    const edited = { ...anchor, entriesAdded: 2 };
    expect((await verifyAuditStream(redis, prefix, [key], { anchor: edited })).problems).toEqual([
      "the anchor was edited (MAC mismatch)",
    ]);
    const stranger = newKey();
    const { anchor: theirs } = await createAuditAnchor(redis, prefix, [key], stranger);
    expect((await verifyAuditStream(redis, prefix, [key], { anchor: theirs })).problems).toEqual([
      `the anchor is keyed with an unknown key '${stranger.kid}'`,
    ]);
    const kept = (await entries(prefix)).filter((e) => e.rec.writer !== b.writer);
    await redis.del(auditStreamKey(prefix));
    for (const { id, rec } of kept) await redis.xadd(auditStreamKey(prefix), id, "r", JSON.stringify(rec));
    await redis.call("XSETID", auditStreamKey(prefix), kept.at(-1)?.id ?? "0-0", "ENTRIESADDED", "8");
    await redis.hdel(auditHeadsKey(prefix), b.writer);
    expect((await verify(prefix, [key])).problems).toEqual([]); // nothing in Redis shows it
    const r = await verifyAuditStream(redis, prefix, [key], { anchor });
    expect(r.problems).toEqual([
      `${b.writer}: anchored at #3 but its head is gone (writer removed)`,
      expect.stringMatching(new RegExp(`^${b.writer}#3 \\(anchored at .*\\) is missing`)),
    ]);
  });
});
