import { createHash } from "node:crypto";
import { canonicalJson } from "@citadel/contracts";
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

/** A writer's head as kept in the heads hash: `seq:hash:kid:mac`, the MAC binding all three to the writer. */
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

export const auditStreamKey = (prefix: string) => `${prefix}:audit`;
export const auditHeadsKey = (prefix: string) => `${prefix}:audit:heads`;
