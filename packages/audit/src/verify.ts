import { type AuditAnchor, canonicalJson } from "@citadel/contracts";
import type { Cluster, Redis } from "ioredis";
import { authenticAnchor, checkAnchor, signAnchor } from "./anchor.js";
import { type AuditKey, AuditKeySet } from "./key.js";
import {
  type AuditHead,
  type AuditRecord,
  auditHeadsKey,
  auditStreamKey,
  genesis,
  headMacOk,
  parseHead,
} from "./record.js";
import { type StreamInfo, streamInfo } from "./stream-info.js";

export interface VerifyReport {
  ok: boolean;
  records: number;
  writers: number;
  /** Each a reason the stream cannot be trusted as it stands. */
  problems: string[];
  /** Facts worth knowing that are not problems (trimming). */
  notes: string[];
}

export interface VerifyOptions {
  /** An anchor written earlier by `createAuditAnchor` (parsed JSON; checked here). */
  anchor?: unknown;
}

interface Scan {
  report: VerifyReport;
  info: StreamInfo | null;
  heads: Map<string, AuditHead>;
  /** Stream id of the record each head names, where the stream still holds it. */
  headIds: Map<string, string>;
}

const PAGE = 1000;

/**
 * Verifies every writer's chain in the stream with the audit keys given: each record
 * is MACed by a known key of its writer's role, sequence numbers are consecutive, each
 * `prev` is the previous MAC, every head is MACed and names its writer's record, and
 * nothing was deleted with XDEL. A chain may start after #1 only where MAXLEN trimmed
 * the stream and nothing was deleted. With an anchor, the stream must still hold or
 * extend every head the anchor saw.
 *
 * Safe on a live stream: heads are read first, so records appended while it runs are
 * newer than every head it compares.
 */
export async function verifyAuditStream(
  redis: Redis | Cluster,
  prefix: string,
  keys: Iterable<AuditKey>,
  opts: VerifyOptions = {},
): Promise<VerifyReport> {
  return (await scan(redis, prefix, new AuditKeySet(keys), opts.anchor)).report;
}

/**
 * Verifies the stream, then snapshots every writer's head and the stream's counters,
 * MACed with `key`: an anchor to keep outside Redis. No anchor when the stream does not
 * verify (anchoring a tampered stream would vouch for it).
 */
export async function createAuditAnchor(
  redis: Redis | Cluster,
  prefix: string,
  keys: Iterable<AuditKey>,
  key: AuditKey,
): Promise<{ report: VerifyReport; anchor: AuditAnchor | null }> {
  const s = await scan(redis, prefix, new AuditKeySet([...keys, key]), undefined);
  if (!s.report.ok) return { report: s.report, anchor: null };
  const heads: AuditAnchor["heads"] = {};
  for (const [writer, h] of s.heads) heads[writer] = { seq: h.seq, hash: h.hash, id: s.headIds.get(writer) ?? null };
  const anchor = signAnchor(
    {
      format: "citadel.audit-anchor/v1",
      prefix,
      at: new Date().toISOString(),
      entriesAdded: s.info?.entriesAdded ?? 0,
      lastId: s.info?.lastId ?? "0-0",
      heads,
    },
    key,
  );
  return { report: s.report, anchor };
}

async function scan(redis: Redis | Cluster, prefix: string, keys: AuditKeySet, anchorRaw: unknown): Promise<Scan> {
  const problems: string[] = [];
  const notes: string[] = [];
  if (keys.size === 0) problems.push("no audit keys were given, so no record can be verified");
  const anchor = anchorRaw === undefined ? null : authenticAnchor(anchorRaw, prefix, keys, problems);
  // Heads before the stream: every record a head names is then already in the stream.
  const rawHeads = await redis.hgetall(auditHeadsKey(prefix));
  const info = await streamInfo(redis, auditStreamKey(prefix));
  const heads = new Map<string, AuditHead>();
  for (const [writer, value] of Object.entries(rawHeads)) {
    const h = checkHead(keys, writer, value, problems);
    if (h) heads.set(writer, h);
  }

  let deletions = true;
  if (info?.maxDeletedId === null)
    problems.push(
      "this Redis does not report deletions (XINFO STREAM has no max-deleted-entry-id; Redis 7 or later needed), so a deletion cannot be told from trimming",
    );
  else if (info && info.maxDeletedId !== "0-0")
    problems.push(`entries were deleted from the stream with XDEL (the newest deleted id is ${info.maxDeletedId})`);
  else deletions = false;
  const trimmed = info !== null && info.entriesAdded > info.length;
  if (trimmed && !deletions)
    notes.push(
      `the stream was trimmed (MAXLEN): ${info.entriesAdded - info.length} of ${info.entriesAdded} entries are gone from Redis; the log holds them`,
    );
  // Only trimming, which removes the oldest entries, may cut the start of a chain.
  const mayStartLate = trimmed && !deletions;

  const last = new Map<string, { seq: number; hash: string }>();
  const headIds = new Map<string, string>();
  const atHead = new Map<string, string>();
  const anchoredSeen = new Map<string, { id: string; hash: string }>();
  let records = 0;
  let cursor = "-";
  for (;;) {
    const page = await redis.xrange(auditStreamKey(prefix), cursor, "+", "COUNT", PAGE);
    for (const [id, fields] of page) {
      if (id === cursor) continue;
      records++;
      const rec = parseRecord(fields);
      if (!rec) {
        problems.push(`${id}: not an audit record`);
        continue;
      }
      checkRecord(keys, id, rec, problems);
      const before = last.get(rec.writer);
      if (before) {
        if (rec.seq !== before.seq + 1)
          problems.push(`${id}: ${rec.writer} jumps from #${before.seq} to #${rec.seq} (deleted or reordered)`);
        else if (rec.prev !== before.hash)
          problems.push(`${id}: ${rec.writer}#${rec.seq} does not link to #${before.seq}`);
      } else if (rec.seq === 1) {
        if (rec.prev !== genesis(rec.writer)) problems.push(`${id}: ${rec.writer}#1 has a wrong genesis link`);
      } else if (!mayStartLate) {
        problems.push(`${id}: ${rec.writer} starts at #${rec.seq}; earlier records were deleted`);
      }
      last.set(rec.writer, { seq: rec.seq, hash: rec.hash });
      if (heads.get(rec.writer)?.seq === rec.seq) {
        headIds.set(rec.writer, id);
        atHead.set(rec.writer, rec.hash);
      }
      if (anchor?.heads[rec.writer]?.seq === rec.seq) anchoredSeen.set(rec.writer, { id, hash: rec.hash });
    }
    cursor = page[page.length - 1]?.[0] ?? cursor;
    if (page.length < PAGE) break;
  }

  for (const [writer, head] of heads) {
    const tail = last.get(writer);
    if (!tail) {
      if (!mayStartLate) problems.push(`${writer}: head #${head.seq} but no records in the stream`);
    } else if (tail.seq < head.seq) {
      problems.push(`${writer}: last record #${tail.seq} is behind the head #${head.seq} (tail deleted)`);
    } else if (atHead.has(writer)) {
      if (atHead.get(writer) !== head.hash)
        problems.push(`${writer}: record #${head.seq} is not the one its head names (edited)`);
    } else if (!mayStartLate) {
      problems.push(`${writer}: record #${head.seq}, named by its head, is missing`);
    }
  }
  // A writer with records but no head when heads were read may have started since: look again.
  const headless = [...last.keys()].filter((w) => !(w in rawHeads));
  if (headless.length > 0) {
    const later = await redis.hmget(auditHeadsKey(prefix), ...headless);
    headless.forEach((w, i) => {
      const value = later[i];
      if (value === null || value === undefined) problems.push(`${w}: records with no head (forged writer)`);
      else checkHead(keys, w, value, problems);
    });
  }
  if (anchor)
    checkAnchor(anchor, { info, headWriters: new Set(Object.keys(rawHeads)), heads, anchoredSeen }, problems, notes);
  return {
    report: { ok: problems.length === 0, records, writers: last.size, problems, notes },
    info,
    heads,
    headIds,
  };
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
