import { createHash } from "node:crypto";
import { canonicalJson } from "@citadel/contracts";
import { tagged } from "@citadel/queue";
import type { AuditKey } from "./key.js";

export type AuditEvent =
  | "job.accepted"
  | "job.rejected"
  | "job.completed"
  | "job.failed"
  | "job.cancelled"
  | "model.loaded"
  | "model.rejected"
  | "model.unloaded"
  | "model.retired"
  | "auth.denied"
  | "rate.limited"
  | "circuit.opened"
  | "circuit.closed";

/** The fields of docs/contract.md#audit-records; absent ones are simply left out. Never tensor data or secrets. */
export interface AuditFields {
  tenant?: string;
  clientIp?: string;
  requestId?: string;
  jobId?: string;
  model?: string;
  version?: string;
  batchSize?: number;
  inputBytes?: number;
  queueMs?: number;
  inferenceMs?: number;
  outcome?: string;
  errorCode?: string;
  workerId?: string;
  artifactSha256?: string;
  provider?: string;
  detail?: string;
  /** How many events one aggregated record stands for (denials per IP and window). */
  count?: number;
}

export interface AuditRecord extends AuditFields {
  writer: string;
  seq: number;
  prev: string;
  ts: string;
  event: AuditEvent;
  /** Which audit key MACed this record (AuditKey.kid). */
  kid: string;
  /** HMAC-SHA256 of every other field under the key named by `kid`. */
  hash: string;
}

const RECORD_MAC_DOMAIN = "citadel.audit.record/v1";

/** The record's MAC: over its canonical JSON (keys sorted), so field order does not matter. */
export function macRecord(key: AuditKey, body: Omit<AuditRecord, "hash">): string {
  return key.mac(RECORD_MAC_DOMAIN, canonicalJson(body));
}

/** The fields a writer sets on every record: its place in the chain. */
export type ChainFields = Pick<AuditRecord, "writer" | "seq" | "prev" | "ts" | "event" | "kid">;

/** Every field a record's body may carry, and whether the chain sets it; the type makes the list complete. */
const BODY_FIELDS: { [K in keyof Omit<AuditRecord, "hash">]-?: K extends keyof ChainFields ? "chain" : "event" } = {
  tenant: "event",
  clientIp: "event",
  requestId: "event",
  jobId: "event",
  model: "event",
  version: "event",
  batchSize: "event",
  inputBytes: "event",
  queueMs: "event",
  inferenceMs: "event",
  outcome: "event",
  errorCode: "event",
  workerId: "event",
  artifactSha256: "event",
  provider: "event",
  detail: "event",
  count: "event",
  writer: "chain",
  seq: "chain",
  prev: "chain",
  ts: "chain",
  event: "chain",
  kid: "chain",
};
/** In canonical order, each with its JSON prefix: a body written in this order is already sorted. */
const SORTED_FIELDS = Object.entries(BODY_FIELDS)
  .sort(([a], [b]) => (a < b ? -1 : 1))
  .map(([k, from]) => ({ k, fromChain: from === "chain", prefix: `${JSON.stringify(k)}:` }));

/** A sealed record: its place in the chain and its stored form (for the stream). */
export interface SealedRecord {
  seq: number;
  hash: string;
  json: string;
}

/**
 * A record's canonical form, MAC and stored form in one pass (the writer's hot path:
 * one record per job). The canonical JSON is written field by field in sorted order,
 * undefined ones left out — for strings, numbers and booleans exactly what
 * canonicalJson writes (audit.test.ts holds it to the definition), without building
 * and sorting an object; any other value takes canonicalJson itself. The stored form
 * is that text with the MAC appended (a reader does not care about field order: the
 * verifier recomputes the canonical form). Fields outside the contract's list are
 * not recorded.
 */
export function sealRecord(key: AuditKey, fields: AuditFields, chain: ChainFields): SealedRecord {
  const canonical = writeCanonical(fields, chain) ?? canonicalJson(recordBody(fields, chain));
  const hash = key.mac(RECORD_MAC_DOMAIN, canonical);
  const json = canonical === "{}" ? `{"hash":"${hash}"}` : `${canonical.slice(0, -1)},"hash":"${hash}"}`;
  return { seq: chain.seq, hash, json };
}

/** The canonical JSON of a body of plain values, written directly; null if a value is not plain. */
function writeCanonical(fields: AuditFields, chain: ChainFields): string | null {
  let text = "";
  for (const { k, fromChain, prefix } of SORTED_FIELDS) {
    const v: unknown = fromChain ? chain[k as keyof ChainFields] : fields[k as keyof AuditFields];
    if (v === undefined) continue;
    const t = typeof v;
    if (t !== "string" && t !== "number" && t !== "boolean") return null;
    text += `${text === "" ? "" : ","}${prefix}${JSON.stringify(v)}`;
  }
  return `{${text}}`;
}

/** A record's body as an object: the contract's fields only, the chain's taking precedence. */
export function recordBody(fields: AuditFields, chain: ChainFields): Omit<AuditRecord, "hash"> {
  const body: Record<string, unknown> = {};
  for (const { k, fromChain } of SORTED_FIELDS) {
    const v = fromChain ? chain[k as keyof ChainFields] : fields[k as keyof AuditFields];
    if (v !== undefined) body[k] = v;
  }
  return body as unknown as Omit<AuditRecord, "hash">;
}

/** The `prev` of a writer's first record. Public: it only marks where a chain begins. */
export function genesis(writer: string): string {
  return createHash("sha256").update(`citadel-audit-genesis|${writer}`).digest("hex");
}

/** A writer's head as kept in its head key: `seq:hash:kid:mac`, the MAC binding all three to the writer. */
export interface AuditHead {
  seq: number;
  hash: string;
  kid: string;
  mac: string;
}

export function formatHead(key: AuditKey, writer: string, seq: number, hash: string): string {
  return `${seq}:${hash}:${key.kid}:${key.mac("citadel.audit.head/v1", writer, String(seq), hash)}`;
}

/** Parses a head value; null when it is not in the keyed form. */
export function parseHead(value: string): AuditHead | null {
  const m = /^(\d+):([0-9a-f]{64}):([0-9a-f]{16}):([0-9a-f]{64})$/.exec(value);
  if (!m) return null;
  return { seq: Number(m[1]), hash: m[2] as string, kid: m[3] as string, mac: m[4] as string };
}

export function headMacOk(key: AuditKey, writer: string, head: AuditHead): boolean {
  return key.verify(head.mac, "citadel.audit.head/v1", writer, String(head.seq), head.hash);
}

/**
 * A writer's lease in the writers hash: `until:written:kid:mac`. Its stream and head
 * expire at `until` (PXAT/PEXPIREAT, the same instant), and the writer renews the lease
 * before it extends them, so a verifier can tell keys that expired (Redis time past
 * `until`) from keys deleted early. `written` turns 1 once the first record is in
 * Redis: before that, no keys is a writer starting, after it a deletion. The MAC binds
 * both to the writer: a lease cannot be forged or moved to another writer. Restoring an
 * older, genuine lease of the same writer is what an anchor catches (lease went back).
 */
export interface AuditLease {
  until: number;
  written: boolean;
  kid: string;
  mac: string;
}

const leaseParts = (writer: string, until: number, written: boolean) => [
  "citadel.audit.lease/v1",
  writer,
  String(until),
  written ? "1" : "0",
];

export function formatLease(key: AuditKey, writer: string, until: number, written: boolean): string {
  return `${until}:${written ? 1 : 0}:${key.kid}:${key.mac(...leaseParts(writer, until, written))}`;
}

export function parseLease(value: string): AuditLease | null {
  const m = /^(\d+):([01]):([0-9a-f]{16}):([0-9a-f]{64})$/.exec(value);
  if (!m) return null;
  return { until: Number(m[1]), written: m[2] === "1", kid: m[3] as string, mac: m[4] as string };
}

export function leaseMacOk(key: AuditKey, writer: string, lease: AuditLease): boolean {
  return key.verify(lease.mac, ...leaseParts(writer, lease.until, lease.written));
}

/**
 * The writers hash (writer id → lease), in the deployment's own slot: each writer adds
 * itself before its first record, and a verifier lists it (never SCAN) to find every
 * writer's stream.
 */
export const auditWritersKey = (prefix: string) => `${prefix}:audit:writers`;

/**
 * A writer's stream and head share a slot of their own (`{<tag>:a:<writer>}`), so the
 * MULTI that appends records and moves the head stays in one slot on a Redis Cluster
 * while writers spread over the shards. Writer ids hold no braces (AuditWriter
 * replaces them); `tagged` refuses one that does.
 */
export const auditStreamKey = (prefix: string, writer: string) => `${tagged(prefix, `a:${writer}`)}:audit`;
/** A writer's head (a string `seq:hash:kid:mac`, see formatHead), beside its stream. */
export const auditHeadKey = (prefix: string, writer: string) => `${tagged(prefix, `a:${writer}`)}:audit:head`;
