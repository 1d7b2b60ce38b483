import { AuditAnchor, canonicalJson } from "@citadel/contracts";
import type { AuditKey, AuditKeySet } from "./key.js";
import type { AuditHead } from "./record.js";
import { compareIds, type StreamInfo } from "./stream-info.js";

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
  info: StreamInfo | null;
  /** Every writer in the heads hash (valid or not). */
  headWriters: ReadonlySet<string>;
  heads: ReadonlyMap<string, AuditHead>;
  /** The record at each anchored writer's anchored seq, where the stream still has it. */
  anchoredSeen: ReadonlyMap<string, { id: string; hash: string }>;
}

/**
 * Checks the stream still holds or extends every anchored head: counters never go
 * back, no anchored writer vanished or went back, and every anchored record the
 * stream could still hold (not older than its first entry) is there, unchanged.
 */
export function checkAnchor(anchor: AuditAnchor, seen: AnchorEvidence, problems: string[], notes: string[]): void {
  const { info } = seen;
  if (!info) problems.push(`the stream is gone; at the anchor of ${anchor.at} it had ${anchor.entriesAdded} entries`);
  else {
    if (info.entriesAdded < anchor.entriesAdded)
      problems.push(
        `entries-added went back from ${anchor.entriesAdded} (anchor of ${anchor.at}) to ${info.entriesAdded}: the stream was recreated`,
      );
    if (compareIds(info.lastId, anchor.lastId) < 0)
      problems.push(`the last id went back from ${anchor.lastId} to ${info.lastId}: the stream was recreated`);
  }
  for (const [writer, a] of Object.entries(anchor.heads)) {
    const head = seen.heads.get(writer);
    if (!seen.headWriters.has(writer))
      problems.push(`${writer}: anchored at #${a.seq} but its head is gone (writer removed)`);
    else if (head && head.seq < a.seq)
      problems.push(`${writer}: head went back from anchored #${a.seq} to #${head.seq}`);
    if (a.id === null) continue;
    const rec = seen.anchoredSeen.get(writer);
    if (rec) {
      if (rec.id !== a.id || rec.hash !== a.hash)
        problems.push(`${writer}#${a.seq} at ${rec.id} is not the anchored record (${a.id})`);
    } else if (info?.firstId && compareIds(a.id, info.firstId) >= 0) {
      problems.push(
        `${writer}#${a.seq} (anchored at ${a.id}) is missing, though the stream still reaches back to ${info.firstId}`,
      );
    } else if (info) notes.push(`${writer}#${a.seq} (anchored at ${a.id}) has since been trimmed; the log holds it`);
  }
}
