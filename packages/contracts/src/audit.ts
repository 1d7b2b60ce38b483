import { z } from "zod";

const StreamId = z.string().regex(/^\d+-\d+$/, "a stream entry id");
const Hex = z.string().regex(/^[0-9a-f]+$/, "hex");

/**
 * A snapshot of the audit streams kept outside Redis (`citadel audit anchor`): every
 * writer's head, its stream's counters and its lease at one moment, MACed with an
 * audit key. A later `citadel audit verify --anchor` checks each writer's stream still
 * holds or extends it (or expired as its lease said). v1 anchored the one stream of
 * before the split per writer; it is refused with a word to take a new anchor.
 */
export const AuditAnchor = z.strictObject({
  format: z.literal("citadel.audit-anchor/v2"),
  prefix: z.string().min(1),
  at: z.string(),
  heads: z.record(
    z.string(),
    z.strictObject({
      seq: z.number().int().min(1),
      hash: Hex,
      /** Where the head record sat in the writer's stream; null when it was already trimmed. */
      id: StreamId.nullable(),
      /** XINFO STREAM entries-added of the writer's stream: only ever grows while the stream exists. */
      entriesAdded: z.number().int().min(0),
      lastId: StreamId,
      /** The writer's lease end (epoch ms): its keys may not be gone before then. */
      until: z.number().int().min(0),
    }),
  ),
  kid: Hex,
  mac: Hex,
});
export type AuditAnchor = z.infer<typeof AuditAnchor>;
