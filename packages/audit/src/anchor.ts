import { AuditAnchor, canonicalJson } from "@citadel/contracts";
import type { AuditKey, AuditKeySet } from "./key.js";
import { compareIds } from "./stream-info.js";
import type { WriterScan } from "./verify.js";

export type AnchorBody = Omit<AuditAnchor, "mac">;

const anchorParts = (body: AnchorBody) => ["citadel.audit.anchor/v1", canonicalJson(body)];

/** MACs an anchor with the operator's audit key (its kid is part of what is MACed). */
export function signAnchor(body: Omit<AnchorBody, "kid">, key: AuditKey): AuditAnchor {
  const keyed: AnchorBody = { ...body, kid: key.kid };
  return { ...keyed, mac: key.mac(...anchorParts(keyed)) };
}

/** The anchor if it is well formed, for this prefix and MACed by a known key; else null with the reason in `problems`. */
export function authenticAnchor(
  raw: unknown,
  prefix: string,
  keys: AuditKeySet,
  problems: string[],
): AuditAnchor | null {
  if (typeof raw === "object" && raw !== null && (raw as { format?: unknown }).format === "citadel.audit-anchor/v1") {
    problems.push(
      "the anchor is of format v1 (one stream for every writer, before streams were split per writer): take a new anchor",
    );
    return null;
  }
  const parsed = AuditAnchor.safeParse(raw);
  if (!parsed.success) {
    problems.push(`the anchor is malformed: ${parsed.error.issues[0]?.message ?? "invalid"}`);
    return null;
  }
  const { mac, ...body } = parsed.data;
  const key = keys.get(body.kid);
  if (!key) problems.push(`the anchor is keyed with an unknown key '${body.kid}'`);
  else if (!key.verify(mac, ...anchorParts(body))) problems.push("the anchor was edited (MAC mismatch)");
  else if (body.prefix !== prefix) problems.push(`the anchor is for ${body.prefix}, not ${prefix}`);
  else return parsed.data;
  return null;
}

/** What the scan saw that an anchor is checked against. */
export interface AnchorEvidence {
  /** Redis time (epoch ms) at the scan. */
  now: number;
  /** Every writer in the writers hash (valid lease or not). */
  inHash: ReadonlySet<string>;
  writers: readonly WriterScan[];
}

/**
 * Checks each anchored writer's stream still holds or extends what the anchor saw:
 * the writer is still listed (or its anchored lease has ended), its lease and counters
 * never go back, its head does not go back, and the anchored record, where the stream
 * could still hold it (not older than its first entry), is there, unchanged.
 */
export function checkAnchor(anchor: AuditAnchor, seen: AnchorEvidence, problems: string[], notes: string[]): void {
  const byWriter = new Map(seen.writers.map((w) => [w.report.writer, w]));
  for (const [writer, a] of Object.entries(anchor.heads)) {
    const w = byWriter.get(writer);
    if (!seen.inHash.has(writer) || !w) {
      if (a.until <= seen.now)
        notes.push(`${writer}#${a.seq} (anchored) has since expired with its lease; the log holds it`);
      else
        problems.push(
          `${writer}: anchored at #${a.seq} but gone from the writers hash though its lease ran to ${new Date(a.until).toISOString()} (writer removed)`,
        );
      continue;
    }
    if (w.lease && w.lease.until < a.until)
      problems.push(`${writer}: its lease went back from the anchored one (an older lease restored)`);
    if (w.report.state === "expired") {
      notes.push(`${writer}#${a.seq} (anchored) has since expired with its lease; the log holds it`);
      continue;
    }
    const { info, head } = w;
    if (!info) {
      problems.push(`${writer}: its stream is gone; at the anchor of ${anchor.at} it had ${a.entriesAdded} entries`);
      continue;
    }
    if (info.entriesAdded < a.entriesAdded)
      problems.push(
        `${writer}: entries-added went back from ${a.entriesAdded} (anchor of ${anchor.at}) to ${info.entriesAdded}: the stream was recreated`,
      );
    if (compareIds(info.lastId, a.lastId) < 0)
      problems.push(`${writer}: the last id went back from ${a.lastId} to ${info.lastId}: the stream was recreated`);
    if (head && head.seq < a.seq) problems.push(`${writer}: head went back from anchored #${a.seq} to #${head.seq}`);
    if (a.id === null) continue;
    const rec = w.anchoredSeen;
    if (rec) {
      if (rec.id !== a.id || rec.hash !== a.hash)
        problems.push(`${writer}#${a.seq} at ${rec.id} is not the anchored record (${a.id})`);
    } else if (info.firstId && compareIds(a.id, info.firstId) >= 0) {
      problems.push(
        `${writer}#${a.seq} (anchored at ${a.id}) is missing, though its stream still reaches back to ${info.firstId}`,
      );
    } else notes.push(`${writer}#${a.seq} (anchored at ${a.id}) has since been trimmed; the log holds it`);
  }
}
