import { z } from "zod";

const StreamId = z.string().regex(/^\d+-\d+$/, "a stream entry id");
const Hex = z.string().regex(/^[0-9a-f]+$/, "hex");

/**
 * A snapshot of the audit stream kept outside Redis (`citadel audit anchor`): every
 * writer's head and the stream's counters at one moment, MACed with an audit key. A
 * later `citadel audit verify --anchor` checks the stream still holds or extends it.
 */
export const AuditAnchor = z.strictObject({
  format: z.literal("citadel.audit-anchor/v1"),
  prefix: z.string().min(1),
  at: z.string(),
  /** XINFO STREAM entries-added: only ever grows while the stream exists. */
  entriesAdded: z.number().int().min(0),
  lastId: StreamId,
  heads: z.record(
    z.string(),
    z.strictObject({
      seq: z.number().int().min(1),
      hash: Hex,
      /** Where the head record sat in the stream; null when it was already trimmed. */
      id: StreamId.nullable(),
    }),
  ),
  kid: Hex,
  mac: Hex,
});
export type AuditAnchor = z.infer<typeof AuditAnchor>;
