import type { Cluster, Redis } from "ioredis";
import { auditStreamKey, auditWritersKey } from "./record.js";

/** What XINFO STREAM says about the audit stream, as far as verification needs it. */
export interface StreamInfo {
  length: number;
  /** Every entry ever added (trimmed and deleted ones included). */
  entriesAdded: number;
  /**
   * The newest id removed by XDEL ("0-0": none). MAXLEN trimming leaves it alone, so it
   * tells a deletion from trimming. null on a Redis older than 7, which does not report it.
   */
  maxDeletedId: string | null;
  firstId: string | null;
  lastId: string;
}

/** XINFO STREAM for `key`, or null when there is no stream. */
export async function streamInfo(redis: Redis | Cluster, key: string): Promise<StreamInfo | null> {
  if ((await redis.exists(key)) === 0) return null;
  const raw = (await redis.call("XINFO", "STREAM", key)) as unknown[];
  const field = (name: string): unknown => {
    const i = raw.indexOf(name);
    return i >= 0 && i % 2 === 0 ? raw[i + 1] : undefined;
  };
  const first = field("first-entry");
  const maxDeleted = field("max-deleted-entry-id");
  return {
    length: Number(field("length") ?? 0),
    entriesAdded: Number(field("entries-added") ?? 0),
    maxDeletedId: typeof maxDeleted === "string" ? maxDeleted : null,
    firstId: Array.isArray(first) && typeof first[0] === "string" ? first[0] : null,
    lastId: String(field("last-generated-id") ?? "0-0"),
  };
}

/** Orders stream ids (`ms-seq`) numerically. */
export function compareIds(a: string, b: string): number {
  const [am = 0n, as = 0n] = a.split("-").map((p) => BigInt(p));
  const [bm = 0n, bs = 0n] = b.split("-").map((p) => BigInt(p));
  if (am !== bm) return am < bm ? -1 : 1;
  return as === bs ? 0 : as < bs ? -1 : 1;
}

/** One entry of a writer's stream, parsed as far as its JSON goes (not verified). */
export interface AuditEntry {
  writer: string;
  /** The entry's id in its writer's stream. */
  id: string;
  rec: Record<string, unknown>;
}

/** Every writer in the writers hash, in id order (HKEYS: the one list, never SCAN). */
export async function auditWriters(redis: Redis | Cluster, prefix: string): Promise<string[]> {
  return (await redis.hkeys(auditWritersKey(prefix))).sort();
}

/**
 * Every entry of every listed writer's stream, in stream-id order across writers (ids
 * are millisecond times, so roughly the order written): for tools and tests that read
 * the records; verification is verifyAuditStream's.
 */
export async function readAuditEntries(redis: Redis | Cluster, prefix: string): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  for (const writer of await auditWriters(redis, prefix)) {
    if (/[{}]/.test(writer)) continue;
    for (const [id, fields] of await redis.xrange(auditStreamKey(prefix, writer), "-", "+")) {
      let rec: Record<string, unknown> = {};
      try {
        rec = JSON.parse(fields[1] ?? "{}") as Record<string, unknown>;
      } catch {
        // Not JSON: kept as an empty record; verification reports it.
      }
      out.push({ writer, id, rec });
    }
  }
  return out.sort((a, b) => compareIds(a.id, b.id));
}
