import { type AuditAnchor, canonicalJson } from "@citadel/contracts";
import type { Cluster, Redis } from "ioredis";
import { authenticAnchor, checkAnchor, signAnchor } from "./anchor.js";
import { type AuditKey, AuditKeySet } from "./key.js";
import {
  type AuditHead,
  type AuditLease,
  type AuditRecord,
  auditHeadKey,
  auditStreamKey,
  auditWritersKey,
  genesis,
  headMacOk,
  leaseMacOk,
  parseHead,
  parseLease,
} from "./record.js";
import { type StreamInfo, streamInfo } from "./stream-info.js";

/** One writer's part of a verification. */
export interface WriterReport {
  writer: string;
  records: number;
  /** Problems found in this writer's entry, stream or head. */
  problems: number;
  /**
   * `live`: its stream or head is in Redis; `expired`: its lease ended and its keys are
   * gone (dropped from the writers hash when pruning); `starting`: registered, no record
   * in Redis yet; `gone`: keys missing though its lease runs (a problem).
   */
  state: "live" | "expired" | "starting" | "gone";
}

export interface VerifyReport {
  ok: boolean;
  records: number;
  /** Writers whose stream or head is in Redis. */
  writers: number;
  /** Every writer in the writers hash, in id order. */
  perWriter: WriterReport[];
  /** Each a reason the streams cannot be trusted as they stand. */
  problems: string[];
  /** Facts worth knowing that are not problems (trimming, expiry). */
  notes: string[];
}

export interface VerifyOptions {
  /** An anchor written earlier by `createAuditAnchor` (parsed JSON; checked here). */
  anchor?: unknown;
  /**
   * Drop writers whose lease ended and whose keys are gone from the writers hash (the
   * hash's only shrinking: default true). Verify tells such a writer from one deleted
   * early by its MACed lease, so dropping it loses nothing a later run could check.
   */
  prune?: boolean;
}

/** What the scan of one writer saw. */
export interface WriterScan {
  report: WriterReport;
  lease: AuditLease | null;
  info: StreamInfo | null;
  head: AuditHead | null;
  /** Stream id of the record the head names, where the stream still holds it. */
  headId: string | null;
  /** The record at the anchored seq, where the stream still holds it. */
  anchoredSeen: { id: string; hash: string } | null;
}

const PAGE = 1000;
/** Writers verified at once: bounds the commands in flight, not the work. */
const PARALLEL = 8;

/**
 * Verifies every writer listed in the writers hash (never SCAN): each writer's lease is
 * MACed, its stream holds only its records, each MACed by a known key of its role,
 * sequence numbers are consecutive, each `prev` is the previous MAC, its head is MACed
 * and names its last record, and nothing was deleted with XDEL. A chain may start after
 * #1 only where MAXLEN trimmed the stream and nothing was deleted. A writer whose keys
 * are gone is expired when Redis time is past its lease, else deleted. With an anchor,
 * each anchored writer must still hold or extend what the anchor saw.
 *
 * Safe on live streams: a writer's head is read before its stream, so records appended
 * while it runs are newer than the head it compares; writers added meanwhile are left
 * to the next run.
 */
export async function verifyAuditStream(
  redis: Redis | Cluster,
  prefix: string,
  keys: Iterable<AuditKey>,
  opts: VerifyOptions = {},
): Promise<VerifyReport> {
  return (await scan(redis, prefix, new AuditKeySet(keys), opts.anchor, opts.prune ?? true)).report;
}

/**
 * Verifies the streams, then snapshots every writer's head, stream counters and lease,
 * MACed with `key`: an anchor to keep outside Redis. No anchor when they do not verify
 * (anchoring a tampered stream would vouch for it).
 */
export async function createAuditAnchor(
  redis: Redis | Cluster,
  prefix: string,
  keys: Iterable<AuditKey>,
  key: AuditKey,
): Promise<{ report: VerifyReport; anchor: AuditAnchor | null }> {
  const s = await scan(redis, prefix, new AuditKeySet([...keys, key]), undefined, true);
  if (!s.report.ok) return { report: s.report, anchor: null };
  const heads: AuditAnchor["heads"] = {};
  for (const w of s.writers) {
    if (!w.head || !w.info || !w.lease) continue;
    heads[w.report.writer] = {
      seq: w.head.seq,
      hash: w.head.hash,
      id: w.headId,
      entriesAdded: w.info.entriesAdded,
      lastId: w.info.lastId,
      until: w.lease.until,
    };
  }
  const anchor = signAnchor({ format: "citadel.audit-anchor/v2", prefix, at: new Date().toISOString(), heads }, key);
  return { report: s.report, anchor };
}

/** Redis's clock (epoch ms): the one key expiry follows. */
async function redisNow(redis: Redis | Cluster): Promise<number> {
  const [s, us] = (await redis.time()) as [string | number, string | number];
  return Number(s) * 1000 + Math.floor(Number(us) / 1000);
}

/** Deletes a writers-hash entry only if it still holds the value verify judged. */
const DROP_IF_UNCHANGED = `if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0`;

/**
 * Drops from the writers hash the writers (of those `only` admits) whose lease, MACed
 * with one of `keys`, ended by Redis time and whose stream and head are gone: expired as
 * planned. What verify does for every writer, for a writer to do at start for its own
 * role's, so the hash stays bounded where verify runs rarely. Returns how many went.
 */
export async function pruneExpiredWriters(
  redis: Redis | Cluster,
  prefix: string,
  keys: Iterable<AuditKey>,
  only: (writer: string) => boolean = () => true,
): Promise<number> {
  const keySet = new AuditKeySet(keys);
  const leases = await redis.hgetall(auditWritersKey(prefix));
  const now = await redisNow(redis);
  let dropped = 0;
  for (const [writer, value] of Object.entries(leases)) {
    if (/[{}]/.test(writer) || !only(writer)) continue;
    const lease = checkLease(keySet, writer, value, []);
    if (!lease || lease.until > now) continue;
    if ((await redis.exists(auditStreamKey(prefix, writer), auditHeadKey(prefix, writer))) > 0) continue;
    dropped += Number(await redis.eval(DROP_IF_UNCHANGED, 1, auditWritersKey(prefix), writer, value));
  }
  return dropped;
}

async function scan(
  redis: Redis | Cluster,
  prefix: string,
  keys: AuditKeySet,
  anchorRaw: unknown,
  prune: boolean,
): Promise<{ report: VerifyReport; writers: WriterScan[] }> {
  const problems: string[] = [];
  const notes: string[] = [];
  if (keys.size === 0) problems.push("no audit keys were given, so no record can be verified");
  const anchor = anchorRaw === undefined ? null : authenticAnchor(anchorRaw, prefix, keys, problems);
  const leases = await redis.hgetall(auditWritersKey(prefix));
  const now = await redisNow(redis);
  const ids = Object.keys(leases).sort();
  const scans: WriterScan[] = [];
  const found = new Map<string, { problems: string[]; notes: string[] }>();
  for (let i = 0; i < ids.length; i += PARALLEL) {
    const part = ids.slice(i, i + PARALLEL);
    const done = await Promise.all(
      part.map(async (writer) => {
        const own = { problems: [] as string[], notes: [] as string[] };
        found.set(writer, own);
        const anchored = anchor?.heads[writer]?.seq;
        return scanWriter(redis, prefix, keys, writer, leases[writer] ?? "", now, anchored, own);
      }),
    );
    scans.push(...done);
  }
  for (const s of scans) {
    const own = found.get(s.report.writer);
    if (own) {
      problems.push(...own.problems);
      notes.push(...own.notes);
    }
    if (prune && s.report.state === "expired") {
      await redis.eval(DROP_IF_UNCHANGED, 1, auditWritersKey(prefix), s.report.writer, leases[s.report.writer] ?? "");
    }
  }
  if (anchor) checkAnchor(anchor, { now, inHash: new Set(ids), writers: scans }, problems, notes);
  // The one stream of before the split per writer is not read: say so while it is there.
  if ((await redis.exists(`${prefix}:audit`)) > 0)
    notes.push(
      `${prefix}:audit, the single stream of before audit streams were split per writer, is still in Redis and was not verified (docs/operations.md)`,
    );
  const records = scans.reduce((n, s) => n + s.report.records, 0);
  const writers = scans.filter((s) => s.report.state === "live").length;
  return {
    report: { ok: problems.length === 0, records, writers, perWriter: scans.map((s) => s.report), problems, notes },
    writers: scans,
  };
}

async function scanWriter(
  redis: Redis | Cluster,
  prefix: string,
  keys: AuditKeySet,
  writer: string,
  rawLease: string,
  now: number,
  anchoredSeq: number | undefined,
  out: { problems: string[]; notes: string[] },
): Promise<WriterScan> {
  const { problems, notes } = out;
  const result: WriterScan = {
    report: { writer, records: 0, problems: 0, state: "live" },
    lease: null,
    info: null,
    head: null,
    headId: null,
    anchoredSeen: null,
  };
  const finish = () => {
    result.report.problems = problems.length;
    return result;
  };
  if (/[{}]/.test(writer)) {
    problems.push(`${writer}: a writer id with braces in the writers hash (forged: no writer names itself so)`);
    result.report.state = "gone";
    return finish();
  }
  const lease = checkLease(keys, writer, rawLease, problems);
  result.lease = lease;
  // Head before the stream: every record the head names is then already in the stream.
  const rawHead = await redis.get(auditHeadKey(prefix, writer));
  const info = await streamInfo(redis, auditStreamKey(prefix, writer));
  result.info = info;
  if (rawHead === null && info === null) {
    const until = lease ? new Date(lease.until).toISOString() : "";
    if (!lease) result.report.state = "gone";
    else if (lease.until <= now) {
      result.report.state = "expired";
      notes.push(`${writer}: expired with its lease at ${until}; its records are in the log`);
    } else if (!lease.written) {
      result.report.state = "starting";
      notes.push(`${writer}: registered, no record in Redis yet (starting, or it stopped before its first write)`);
    } else {
      result.report.state = "gone";
      problems.push(`${writer}: its stream and head are gone though its lease runs to ${until} (deleted)`);
    }
    return finish();
  }
  const head = rawHead === null ? null : checkHead(keys, writer, rawHead, problems);
  result.head = head;
  if (rawHead === null) problems.push(`${writer}: records with no head (head deleted, or a forged writer)`);
  if (info === null) problems.push(`${writer}: a head but no stream (stream deleted)`);

  let deletions = true;
  if (info?.maxDeletedId === null)
    problems.push(
      `${writer}: this Redis does not report deletions (XINFO STREAM has no max-deleted-entry-id; Redis 7 or later needed), so a deletion cannot be told from trimming`,
    );
  else if (info && info.maxDeletedId !== "0-0")
    problems.push(
      `${writer}: entries were deleted from its stream with XDEL (the newest deleted id is ${info.maxDeletedId})`,
    );
  else deletions = false;
  const trimmed = info !== null && info.entriesAdded > info.length;
  if (trimmed && !deletions)
    notes.push(
      `${writer}: the stream was trimmed (MAXLEN): ${info.entriesAdded - info.length} of ${info.entriesAdded} entries are gone from Redis; the log holds them`,
    );
  // Only trimming, which removes the oldest entries, may cut the start of a chain.
  const mayStartLate = trimmed && !deletions;

  let last: { seq: number; hash: string } | null = null;
  let atHead: string | null = null;
  let cursor = "-";
  for (;;) {
    if (!info) break;
    const page = await redis.xrange(auditStreamKey(prefix, writer), cursor, "+", "COUNT", PAGE);
    for (const [id, fields] of page) {
      if (id === cursor) continue;
      result.report.records++;
      const rec = parseRecord(fields);
      if (!rec) {
        problems.push(`${writer} ${id}: not an audit record`);
        continue;
      }
      if (rec.writer !== writer) {
        problems.push(`${writer} ${id}: a record of ${rec.writer} in this writer's stream (forged or moved)`);
        continue;
      }
      checkRecord(keys, id, rec, problems);
      if (last) {
        if (rec.seq !== last.seq + 1)
          problems.push(`${id}: ${writer} jumps from #${last.seq} to #${rec.seq} (deleted or reordered)`);
        else if (rec.prev !== last.hash) problems.push(`${id}: ${writer}#${rec.seq} does not link to #${last.seq}`);
      } else if (rec.seq === 1) {
        if (rec.prev !== genesis(writer)) problems.push(`${id}: ${writer}#1 has a wrong genesis link`);
      } else if (!mayStartLate) {
        problems.push(`${id}: ${writer} starts at #${rec.seq}; earlier records were deleted`);
      }
      last = { seq: rec.seq, hash: rec.hash };
      if (head?.seq === rec.seq) {
        result.headId = id;
        atHead = rec.hash;
      }
      if (anchoredSeq === rec.seq) result.anchoredSeen = { id, hash: rec.hash };
    }
    cursor = page[page.length - 1]?.[0] ?? cursor;
    if (page.length < PAGE) break;
  }

  if (head) {
    if (!last) {
      if (!mayStartLate && info) problems.push(`${writer}: head #${head.seq} but no records in its stream`);
    } else if (last.seq < head.seq) {
      problems.push(`${writer}: last record #${last.seq} is behind the head #${head.seq} (tail deleted)`);
    } else if (atHead !== null) {
      if (atHead !== head.hash) problems.push(`${writer}: record #${head.seq} is not the one its head names (edited)`);
    } else if (!mayStartLate) {
      problems.push(`${writer}: record #${head.seq}, named by its head, is missing`);
    }
  }
  return finish();
}

function parseRecord(fields: string[]): AuditRecord | null {
  if (fields.length !== 2 || fields[0] !== "r") return null;
  let rec: unknown;
  try {
    rec = JSON.parse(fields[1] ?? "");
  } catch {
    return null;
  }
  if (typeof rec !== "object" || rec === null) return null;
  const r = rec as Partial<AuditRecord>;
  const wellFormed =
    typeof r.writer === "string" &&
    Number.isSafeInteger(r.seq) &&
    (r.seq ?? 0) >= 1 &&
    typeof r.prev === "string" &&
    typeof r.hash === "string";
  return wellFormed ? (rec as AuditRecord) : null;
}

function checkRecord(keys: AuditKeySet, id: string, rec: AuditRecord, problems: string[]): void {
  const label = `${id}: ${rec.writer}#${rec.seq}`;
  const kid: unknown = rec.kid;
  if (typeof kid !== "string") {
    problems.push(`${label} carries no key id (unkeyed: forged, or written before audit keys)`);
    return;
  }
  const key = keys.get(kid);
  if (!key) {
    problems.push(`${label} is keyed with an unknown key '${kid}' (forged, or its key was not given to verify)`);
    return;
  }
  if (!key.covers(rec.writer)) {
    problems.push(
      `${label} is keyed with the ${key.role} key but is not a ${key.role} writer (forged by another role)`,
    );
    return;
  }
  const { hash, ...body } = rec;
  if (!key.verify(hash, "citadel.audit.record/v1", canonicalJson(body)))
    problems.push(`${label} was edited (MAC mismatch)`);
}

/** The head if it is keyed and its MAC verifies for this writer; else null with the reason in `problems`. */
function checkHead(keys: AuditKeySet, writer: string, value: string, problems: string[]): AuditHead | null {
  const head = parseHead(value);
  if (!head) {
    problems.push(`${writer}: head is not in the keyed form (forged, or written before audit keys)`);
    return null;
  }
  const key = keys.get(head.kid);
  if (!key) problems.push(`${writer}: head #${head.seq} is keyed with an unknown key '${head.kid}'`);
  else if (!key.covers(writer)) problems.push(`${writer}: head is keyed with the ${key.role} key (another role's)`);
  else if (!headMacOk(key, writer, head))
    problems.push(`${writer}: head #${head.seq} was forged or edited (MAC mismatch)`);
  else return head;
  return null;
}

/** The lease if it is keyed and its MAC verifies for this writer; else null with the reason in `problems`. */
function checkLease(keys: AuditKeySet, writer: string, value: string, problems: string[]): AuditLease | null {
  const lease = parseLease(value);
  if (!lease) {
    problems.push(`${writer}: its entry in the writers hash is not a keyed lease (forged)`);
    return null;
  }
  const key = keys.get(lease.kid);
  if (!key) problems.push(`${writer}: lease is keyed with an unknown key '${lease.kid}'`);
  else if (!key.covers(writer)) problems.push(`${writer}: lease is keyed with the ${key.role} key (another role's)`);
  else if (!leaseMacOk(key, writer, lease)) problems.push(`${writer}: lease was forged or edited (MAC mismatch)`);
  else return lease;
  return null;
}
