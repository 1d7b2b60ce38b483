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

/** The record's MAC: over its canonical JSON (keys sorted), so field order does not matter. */
export function macRecord(key: AuditKey, body: Omit<AuditRecord, "hash">): string {
  return key.mac("citadel.audit.record/v1", canonicalJson(body));
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
