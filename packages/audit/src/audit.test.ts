import { createHash, randomBytes } from "node:crypto";
import { canonicalJson } from "@citadel/contracts";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  AuditKey,
  type AuditRecord,
  AuditWriter,
  auditHeadKey,
  auditStreamKey,
  auditWritersKey,
  createAuditAnchor,
  formatLease,
  macRecord,
  recordBody,
  sealRecord,
  verifyAuditStream,
} from "./index.js";

// The unit project's globalSetup starts (or finds) one Redis and exports its URL.
const url = process.env.CITADEL_TEST_REDIS_URL;
if (!url) throw new Error("CITADEL_TEST_REDIS_URL is not set: run through vitest's unit project");
let redis: Redis;
const prefixes: string[] = [];
const silent = { info: () => undefined, error: () => undefined };

beforeAll(() => {
  redis = new Redis(url);
});
const writers: AuditWriter[] = [];
afterAll(async () => {
  for (const w of writers) await w.close(100);
  for (const p of prefixes) {
    for (const w of await redis.hkeys(auditWritersKey(p)))
      if (!/[{}]/.test(w)) await redis.del(auditStreamKey(p, w), auditHeadKey(p, w));
    await redis.del(auditWritersKey(p));
  }
  await redis.quit();
});

function freshPrefix(): string {
  const p = `{audit-${randomBytes(5).toString("hex")}}`;
  prefixes.push(p);
  return p;
}

const newKey = (role?: string) => new AuditKey(randomBytes(32), role);

function writer(prefix: string, name: string, key: AuditKey, retentionMs?: number): AuditWriter {
  const w = new AuditWriter(redis, prefix, name, silent, key, 1_000_000, 100_000, retentionMs);
  writers.push(w);
  return w;
}
const verify = (prefix: string, keys: AuditKey[]) => verifyAuditStream(redis, prefix, keys);

async function writeRecords(w: AuditWriter, n: number, from = 0): Promise<void> {
  for (let i = 0; i < n; i++) w.record("job.completed", { jobId: `job-${from + i}`, outcome: "completed" });
  await w.flush(10_000);
}

async function entries(prefix: string, w: AuditWriter): Promise<{ id: string; rec: Record<string, unknown> }[]> {
  const rows = await redis.xrange(auditStreamKey(prefix, w.writer), "-", "+");
  return rows.map(([id, f]) => ({ id, rec: JSON.parse(f[1] ?? "{}") as Record<string, unknown> }));
}

/** Replaces a writer's stream with these entries, at their ids (so no XDEL shows). */
async function rebuild(prefix: string, w: AuditWriter, kept: { id: string; rec: Record<string, unknown> }[]) {
  const stream = auditStreamKey(prefix, w.writer);
  await redis.del(stream);
  for (const { id, rec } of kept) await redis.xadd(stream, id, "r", JSON.stringify(rec));
}

/** What the unkeyed chain used: SHA-256 over the record with its keys sorted. */
function sha256Record(body: Record<string, unknown>): string {
  const sorted = Object.fromEntries(Object.entries(body).sort(([a], [b]) => (a < b ? -1 : 1)));
  return createHash("sha256").update(JSON.stringify(sorted)).digest("hex");
}

describe("sealing a record (the writer's one pass)", () => {
  const chain = { writer: "worker:w1:0a0b", seq: 7, prev: "p".repeat(64), ts: "2026-12-01T00:00:00.000Z", kid: "k" };
  const seal = (key: AuditKey, fields: object, event: "job.completed" | "job.failed" = "job.completed") => {
    const c = { ...chain, event, kid: key.kid };
    const sealed = sealRecord(key, fields, c);
    const { hash, ...body } = JSON.parse(sealed.json) as Record<string, unknown>;
    return { sealed, hash, body: body as unknown as Omit<AuditRecord, "hash">, expected: recordBody(fields, c) };
  };

  it("MACs the canonical form by definition, and stores that form with the MAC", () => {
    const key = newKey();
    const cases = [
      { jobId: "j1", tenant: "acme", queueMs: 1.5, batchSize: 3, outcome: "completed", provider: "cpu" },
      { jobId: "j2", errorCode: undefined, detail: 'quote " and \\ back\nslash \u2028', count: 0, inferenceMs: 1e-7 },
      { queueMs: Number.NaN, inferenceMs: -0, batchSize: 2 ** 60 },
      {},
    ];
    for (const fields of cases) {
      const { sealed, hash, body, expected } = seal(key, fields);
      expect(body).toEqual(JSON.parse(JSON.stringify(expected)));
      expect(hash).toBe(sealed.hash);
      expect(hash).toBe(macRecord(key, expected));
      // The stored form is the canonical body with the MAC appended.
      expect(sealed.json).toBe(`${canonicalJson(expected).slice(0, -1)},"hash":"${hash}"}`);
      expect("errorCode" in body).toBe(false);
      expect(sealed.seq).toBe(7);
    }
  });

  it("leaves out fields outside the contract, and falls back to the canonical form for a non-plain value", () => {
    const key = newKey();
    const { sealed, hash, body, expected } = seal(key, { jobId: "j", unknownField: "x", detail: { b: [2, 1], a: 1 } });
    expect("unknownField" in body).toBe(false);
    expect(body.detail).toEqual({ a: 1, b: [2, 1] });
    expect(hash).toBe(macRecord(key, expected));
    expect(sealed.json).toBe(`${canonicalJson(expected).slice(0, -1)},"hash":"${hash}"}`);
  });
});

describe("the log copy", () => {
  it("logs each record as the stream holds it when info is enabled, and nothing when it is not", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const lines: object[] = [];
    const logger = (enabled: boolean) => ({
      info: (o: object) => lines.push(o),
      error: () => undefined,
      isLevelEnabled: () => enabled,
    });
    const w = new AuditWriter(redis, prefix, "api:log", logger(true), key);
    writers.push(w);
    await writeRecords(w, 2);
    const stored = (await entries(prefix, w)).map((e) => e.rec);
    expect(lines.map((l) => (l as { audit: unknown }).audit)).toEqual(stored);
    lines.length = 0;
    const quiet = new AuditWriter(redis, prefix, "api:quiet", logger(false), key);
    writers.push(quiet);
    await writeRecords(quiet, 2);
    expect(lines).toEqual([]);
    expect(await entries(prefix, quiet)).toHaveLength(2);
  });
});

describe("keyed audit chain, one stream per writer", () => {
  it("writes each writer to a stream and head of its own slot, listed in the writers hash", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const a = writer(prefix, "api:h{x}", key);
    const b = writer(prefix, "worker", key);
    await writeRecords(a, 2);
    await writeRecords(b, 3);
    // Braces in a name would end the hash tag early: they are replaced.
    expect(a.writer).toMatch(/^api:h_x_:[0-9a-f]{8}$/);
    expect(auditStreamKey(prefix, a.writer)).toBe(`${prefix.slice(0, -1)}:a:${a.writer}}:audit`);
    expect((await redis.hkeys(auditWritersKey(prefix))).sort()).toEqual([a.writer, b.writer].sort());
    expect(await redis.xlen(auditStreamKey(prefix, a.writer))).toBe(2);
    expect(await redis.xlen(auditStreamKey(prefix, b.writer))).toBe(3);
    // Stream and head expire together, at the lease's end.
    const ttl = await redis.pttl(auditStreamKey(prefix, b.writer));
    expect(ttl).toBeGreaterThan(0);
    expect(Math.abs((await redis.pttl(auditHeadKey(prefix, b.writer))) - ttl)).toBeLessThan(5_000);
    const r = await verify(prefix, [key]);
    expect(r.problems).toEqual([]);
    expect(r).toMatchObject({ ok: true, records: 5, writers: 2 });
    expect(r.perWriter.find((w) => w.writer === b.writer)).toEqual({
      writer: b.writer,
      records: 3,
      problems: 0,
      state: "live",
    });
  });

  it("writes a batch in one script call, and sets the stream's expiry again when the stream went missing", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const w = writer(prefix, "api", key);
    await writeRecords(w, 3);
    const stream = auditStreamKey(prefix, w.writer);
    const head = auditHeadKey(prefix, w.writer);
    // Later writes leave the expiry alone; a stream that vanished (a failover lost it) is made again with one.
    await redis.persist(stream);
    await writeRecords(w, 2, 3);
    expect(await redis.pttl(stream)).toBe(-1);
    await redis.del(stream);
    await writeRecords(w, 2, 5);
    expect(await redis.xlen(stream)).toBe(2);
    const ttl = await redis.pttl(stream);
    expect(ttl).toBeGreaterThan(0);
    expect(Math.abs((await redis.pttl(head)) - ttl)).toBeLessThan(5_000);
    expect((await redis.get(head))?.split(":")[0]).toBe("7");
  });

  it("stops a batch at the first record Redis refuses; its head never names a record not in the stream", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const w = writer(prefix, "api", key);
    await writeRecords(w, 1);
    const stream = auditStreamKey(prefix, w.writer);
    const head = auditHeadKey(prefix, w.writer);
    // The stream replaced by a string: every XADD fails; the head stays at the last record in.
    await redis.multi().del(stream).set(stream, "x").exec();
    for (let i = 0; i < 3; i++) w.record("job.completed", { jobId: `late-${i}`, outcome: "completed" });
    await new Promise((r) => setTimeout(r, 100));
    expect(w.backlog).toBe(3);
    expect((await redis.get(head))?.split(":")[0]).toBe("1");
    await redis.del(stream);
    await w.flush(10_000);
    expect(w.backlog).toBe(0);
    expect((await redis.get(head))?.split(":")[0]).toBe("4");
    expect(await redis.xlen(stream)).toBe(3);
    expect(await redis.pttl(stream)).toBeGreaterThan(0);
  });

  it("catches a tail rewritten with recomputed SHA-256 hashes and head, even in a rebuilt stream", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const w = writer(prefix, "api", key);
    await writeRecords(w, 10);
    const all = await entries(prefix, w);
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
    await rebuild(prefix, w, forged);
    const head = (await redis.get(auditHeadKey(prefix, w.writer))) ?? "";
    await redis.set(auditHeadKey(prefix, w.writer), ["10", prev, ...head.split(":").slice(2)].join(":"));
    const r = await verify(prefix, [key]);
    expect(r.ok).toBe(false);
    expect(r.problems.join("\n")).toMatch(/#8 was edited/);
    expect(r.problems.join("\n")).toMatch(/head/);
  });

  it("catches a tail deleted from a rebuilt stream: the head is ahead of the records", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const w = writer(prefix, "api", key);
    await writeRecords(w, 6);
    await rebuild(prefix, w, (await entries(prefix, w)).slice(0, 4));
    const r = await verify(prefix, [key]);
    expect(r.problems).toEqual([`${w.writer}: last record #4 is behind the head #6 (tail deleted)`]);
  });

  it("catches a writer's first records deleted with XDEL while another's stream was trimmed", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const a = writer(prefix, "api", key);
    const b = writer(prefix, "worker", key);
    await writeRecords(a, 8);
    await writeRecords(b, 5);
    // Honest trimming of a's oldest three, then b's first two deleted.
    await redis.xtrim(auditStreamKey(prefix, a.writer), "MAXLEN", 5);
    const bs = await entries(prefix, b);
    await redis.xdel(auditStreamKey(prefix, b.writer), bs[0]?.id ?? "", bs[1]?.id ?? "");
    const r = await verify(prefix, [key]);
    expect(r.ok).toBe(false);
    expect(r.problems.join("\n")).toMatch(new RegExp(`${b.writer}: entries were deleted from its stream with XDEL`));
    expect(r.problems.join("\n")).toMatch(new RegExp(`${b.writer} starts at #3`));
    expect(r.problems.join("\n")).not.toMatch(new RegExp(a.writer));
    expect(r.notes.join("\n")).toMatch(new RegExp(`${a.writer}: the stream was trimmed`));
  });

  it("catches a writer's stream and head deleted while its lease runs, and keeps it listed", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const a = writer(prefix, "api", key);
    const b = writer(prefix, "worker", key);
    await writeRecords(a, 4);
    await writeRecords(b, 3);
    await redis.del(auditStreamKey(prefix, b.writer), auditHeadKey(prefix, b.writer));
    const r = await verify(prefix, [key]);
    expect(r.problems).toEqual([
      expect.stringMatching(
        new RegExp(`^${b.writer}: its stream and head are gone though its lease runs to .* \\(deleted\\)$`),
      ),
    ]);
    expect(r.perWriter.find((w) => w.writer === b.writer)?.state).toBe("gone");
    // Not pruned: the next run reports it again.
    expect(await redis.hexists(auditWritersKey(prefix), b.writer)).toBe(1);
    expect((await verify(prefix, [key])).ok).toBe(false);
  });

  it("catches a writer's records deleted with XDEL, head and all", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const b = writer(prefix, "worker", key);
    await writeRecords(b, 3);
    for (const e of await entries(prefix, b)) await redis.xdel(auditStreamKey(prefix, b.writer), e.id);
    await redis.del(auditHeadKey(prefix, b.writer));
    const r = await verify(prefix, [key]);
    expect(r.ok).toBe(false);
    expect(r.problems.join("\n")).toMatch(/XDEL/);
    expect(r.problems.join("\n")).toMatch(/records with no head/);
  });

  it("tells expiry from deletion by the MACed lease: an expired writer is noted and dropped from the hash", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const live = writer(prefix, "api", key);
    const dead = writer(prefix, "worker", key, 1_500);
    await writeRecords(live, 2);
    await writeRecords(dead, 3);
    await dead.close(100);
    // Redis expires the dead writer's keys at its lease's end.
    while ((await redis.exists(auditStreamKey(prefix, dead.writer), auditHeadKey(prefix, dead.writer))) > 0)
      await new Promise((r) => setTimeout(r, 200));
    const r = await verify(prefix, [key]);
    expect(r.problems).toEqual([]);
    expect(r.notes.join("\n")).toMatch(new RegExp(`${dead.writer}: expired with its lease at`));
    expect(r.perWriter.map((w) => w.state).sort()).toEqual(["expired", "live"]);
    expect(await redis.hkeys(auditWritersKey(prefix))).toEqual([live.writer]);
    // A lease backdated by hand does not pass for expiry: its MAC does not verify.
    await redis.del(auditStreamKey(prefix, live.writer), auditHeadKey(prefix, live.writer));
    const lease = (await redis.hget(auditWritersKey(prefix), live.writer)) ?? "";
    await redis.hset(auditWritersKey(prefix), live.writer, `1${lease.slice(lease.indexOf(":"))}`);
    const backdated = await verify(prefix, [key]);
    expect(backdated.problems).toEqual([`${live.writer}: lease was forged or edited (MAC mismatch)`]);
    expect(await redis.hexists(auditWritersKey(prefix), live.writer)).toBe(1);
  });

  it("a writer starting drops its own role's expired writers from the hash, not others' nor deleted ones", async () => {
    const prefix = freshPrefix();
    const api = newKey("api");
    const worker = newKey("worker");
    const deadApi = writer(prefix, "api:old", api, 1_500);
    const deadWorker = writer(prefix, "worker:old", worker, 1_500);
    const robbed = writer(prefix, "api:robbed", api);
    await writeRecords(deadApi, 2);
    await writeRecords(deadWorker, 2);
    await writeRecords(robbed, 2);
    await deadApi.close(100);
    await deadWorker.close(100);
    await redis.del(auditStreamKey(prefix, robbed.writer), auditHeadKey(prefix, robbed.writer));
    const gone = [deadApi, deadWorker].flatMap((w) => [
      auditStreamKey(prefix, w.writer),
      auditHeadKey(prefix, w.writer),
    ]);
    while ((await redis.exists(...gone)) > 0) await new Promise((r) => setTimeout(r, 200));
    await writeRecords(writer(prefix, "api:new", api), 1);
    while (await redis.hexists(auditWritersKey(prefix), deadApi.writer)) await new Promise((r) => setTimeout(r, 50));
    const left = await redis.hkeys(auditWritersKey(prefix));
    expect(left).toContain(deadWorker.writer);
    expect(left).toContain(robbed.writer);
    expect(left).toHaveLength(3);
  });

  it("a registered writer with no record yet is starting, not deleted", async () => {
    const prefix = freshPrefix();
    const key = newKey("api");
    await redis.hset(auditWritersKey(prefix), "api:new", formatLease(key, "api:new", Date.now() + 60_000, false));
    const r = await verify(prefix, [key]);
    expect(r.problems).toEqual([]);
    expect(r.perWriter).toEqual([{ writer: "api:new", records: 0, problems: 0, state: "starting" }]);
    // Once its lease says it has written, no keys is a deletion.
    await redis.hset(auditWritersKey(prefix), "api:new", formatLease(key, "api:new", Date.now() + 60_000, true));
    expect((await verify(prefix, [key])).problems.join("\n")).toMatch(/api:new: its stream and head are gone/);
  });

  it("reports every record when verified with the wrong key", async () => {
    const prefix = freshPrefix();
    const w = writer(prefix, "api", newKey());
    await writeRecords(w, 4);
    const r = await verify(prefix, [newKey()]);
    expect(r.ok).toBe(false);
    expect(r.problems.filter((p) => /^\d+-\d+: \S+#\d is keyed with an unknown key/.test(p))).toHaveLength(4);
    expect(r.problems.filter((p) => /head #4 is keyed with an unknown key/.test(p))).toHaveLength(1);
    expect(r.problems.filter((p) => /lease is keyed with an unknown key/.test(p))).toHaveLength(1);
  });

  it("accepts honest trimming alone", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const a = writer(prefix, "api", key);
    const b = writer(prefix, "worker", key);
    await writeRecords(a, 10);
    await writeRecords(b, 5);
    await redis.xtrim(auditStreamKey(prefix, a.writer), "MAXLEN", 2);
    await redis.xtrim(auditStreamKey(prefix, b.writer), "MAXLEN", 5);
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
    expect(r.problems).toContain(`${posing.writer}: lease is keyed with the worker key (another role's)`);
  });

  it("catches a record moved into another writer's stream", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const a = writer(prefix, "api", key);
    const b = writer(prefix, "worker", key);
    await writeRecords(a, 2);
    await writeRecords(b, 2);
    const [moved] = await entries(prefix, a);
    await redis.xadd(auditStreamKey(prefix, b.writer), "*", "r", JSON.stringify(moved?.rec));
    const r = await verify(prefix, [key]);
    expect(r.problems.join("\n")).toMatch(
      new RegExp(`${b.writer} \\S+: a record of ${a.writer} in this writer's stream`),
    );
  });

  it("reports records written without a key (the old, unkeyed form)", async () => {
    const prefix = freshPrefix();
    const body = { writer: "api:x", seq: 1, prev: "0", ts: new Date().toISOString(), event: "job.completed" };
    await redis.hset(auditWritersKey(prefix), "api:x", "1");
    await redis.xadd(auditStreamKey(prefix, "api:x"), "*", "r", JSON.stringify({ ...body, hash: sha256Record(body) }));
    await redis.set(auditHeadKey(prefix, "api:x"), `1:${sha256Record(body)}`);
    const r = await verify(prefix, [newKey()]);
    expect(r.problems).toEqual([
      "api:x: its entry in the writers hash is not a keyed lease (forged)",
      "api:x: head is not in the keyed form (forged, or written before audit keys)",
      expect.stringMatching(/api:x#1 carries no key id/),
      expect.stringMatching(/api:x#1 has a wrong genesis link/),
    ]);
  });

  it("refuses a writer id with braces in the writers hash without touching other slots", async () => {
    const prefix = freshPrefix();
    await redis.hset(auditWritersKey(prefix), "api:{x}", "1");
    const r = await verify(prefix, [newKey()]);
    expect(r.problems).toEqual([expect.stringMatching(/^api:\{x\}: a writer id with braces/)]);
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
    expect(anchor?.heads[a.writer]).toMatchObject({ seq: 3, entriesAdded: 3 });
    expect(anchor?.format).toBe("citadel.audit-anchor/v2");
    await writeRecords(a, 5, 3);
    await writeRecords(b, 2, 3);
    const later = await verify(prefix, [key]).then(() =>
      verifyAuditStream(redis, prefix, [key], { anchor: JSON.parse(JSON.stringify(anchor)) }),
    );
    expect(later.problems).toEqual([]);
    // Trimming past an anchored record is what MAXLEN does: noted, not a problem.
    await redis.xtrim(auditStreamKey(prefix, a.writer), "MAXLEN", 4);
    const trimmed = await verifyAuditStream(redis, prefix, [key], { anchor });
    expect(trimmed.problems).toEqual([]);
    expect(trimmed.notes.join("\n")).toMatch(new RegExp(`${a.writer}#3 \\(anchored at .*\\) has since been trimmed`));
  });

  it("catches a tail cut back to an older, genuine head in a rebuilt stream", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const w = writer(prefix, "api", key);
    await writeRecords(w, 5);
    const oldHead = (await redis.get(auditHeadKey(prefix, w.writer))) ?? "";
    await writeRecords(w, 5, 5);
    const { anchor } = await createAuditAnchor(redis, prefix, [], key);
    // The attacker rebuilds the stream without #6..#10 (no XDEL shows), restores the
    // head value they saw earlier and sets the counter back to what it was.
    const keep = (await entries(prefix, w)).slice(0, 5);
    await rebuild(prefix, w, keep);
    const last = keep.at(-1)?.id ?? "0-0";
    await redis.call("XSETID", auditStreamKey(prefix, w.writer), last, "ENTRIESADDED", "10");
    await redis.set(auditHeadKey(prefix, w.writer), oldHead);
    expect((await verify(prefix, [key])).problems).toEqual([]); // nothing in Redis shows it
    const r = await verifyAuditStream(redis, prefix, [key], { anchor });
    expect(r.ok).toBe(false);
    expect(r.problems).toContain(`${w.writer}: head went back from anchored #10 to #5`);
    expect(r.problems.join("\n")).toMatch(new RegExp(`${w.writer}#10 \\(anchored at .*\\) is missing`));
    expect(r.problems.join("\n")).toMatch(/the last id went back/);
  });

  it("catches a writer removed whole, and an anchor edited, keyed by a stranger or of the old format", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const a = writer(prefix, "api", key);
    const b = writer(prefix, "worker", key);
    await writeRecords(a, 3);
    await writeRecords(b, 3);
    await writeRecords(a, 2, 3);
    const { anchor } = await createAuditAnchor(redis, prefix, [], key);
    if (!anchor) throw new Error("no anchor");
    const edited = { ...anchor, at: "2000-01-01T00:00:00.000Z" };
    expect((await verifyAuditStream(redis, prefix, [key], { anchor: edited })).problems).toEqual([
      "the anchor was edited (MAC mismatch)",
    ]);
    const stranger = newKey();
    const { anchor: theirs } = await createAuditAnchor(redis, prefix, [key], stranger);
    expect((await verifyAuditStream(redis, prefix, [key], { anchor: theirs })).problems).toEqual([
      `the anchor is keyed with an unknown key '${stranger.kid}'`,
    ]);
    const v1 = { ...anchor, format: "citadel.audit-anchor/v1" };
    expect((await verifyAuditStream(redis, prefix, [key], { anchor: v1 })).problems).toEqual([
      expect.stringMatching(/format v1 .*take a new anchor/),
    ]);
    // The attacker removes b whole: its keys and its entry in the writers hash.
    await redis.del(auditStreamKey(prefix, b.writer), auditHeadKey(prefix, b.writer));
    await redis.hdel(auditWritersKey(prefix), b.writer);
    expect((await verify(prefix, [key])).problems).toEqual([]); // nothing in Redis shows it
    const r = await verifyAuditStream(redis, prefix, [key], { anchor });
    expect(r.problems).toEqual([
      expect.stringMatching(
        new RegExp(`^${b.writer}: anchored at #3 but gone from the writers hash .*\\(writer removed\\)$`),
      ),
    ]);
  });

  it("catches an older lease restored to pass a deletion off as expiry", async () => {
    const prefix = freshPrefix();
    const key = newKey();
    const w = writer(prefix, "api", key);
    await writeRecords(w, 2);
    const { anchor } = await createAuditAnchor(redis, prefix, [], key);
    // A genuine lease of this writer that has already ended (as an attacker might have
    // kept one from long ago), then its keys deleted.
    await redis.hset(auditWritersKey(prefix), w.writer, formatLease(key, w.writer, Date.now() - 1000, true));
    await redis.del(auditStreamKey(prefix, w.writer), auditHeadKey(prefix, w.writer));
    const r = await verifyAuditStream(redis, prefix, [key], { anchor, prune: false });
    expect(r.problems).toEqual([`${w.writer}: its lease went back from the anchored one (an older lease restored)`]);
  });
});
