import { createHash, randomBytes } from "node:crypto";
import type { Redis } from "ioredis";

export type AuditEvent =
  | "job.accepted"
  | "job.rejected"
  | "job.completed"
  | "job.failed"
  | "job.cancelled"
  | "model.loaded"
  | "model.rejected"
  | "model.unloaded"
  | "auth.denied"
  | "rate.limited"
  | "circuit.opened"
  | "circuit.closed";

/** The fields of SPEC §6; absent ones are simply left out. Never tensor data or secrets. */
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
  hash: string;
}

export function hashRecord(r: Omit<AuditRecord, "hash">): string {
  // Field order is fixed by sorting, so the hash does not depend on insertion order.
  const sorted = Object.fromEntries(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : 1)));
  return createHash("sha256").update(JSON.stringify(sorted)).digest("hex");
}

export function genesis(writer: string): string {
  return createHash("sha256").update(`citadel-audit-genesis|${writer}`).digest("hex");
}

export interface AuditSink {
  record(event: AuditEvent, fields: AuditFields): void;
}

export interface AuditLogger {
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/**
 * Appends hash-chained records to a bounded Redis stream and to the log. Each writer
 * (one per process) numbers its records and links each to the previous one's hash;
 * its latest (seq, hash) is kept in a heads hash so a deleted tail is noticed too.
 *
 * Records are written in order by one pump, many per round trip; while Redis is
 * unreachable they wait in a bounded buffer and are retried, so an outage delays the
 * stream copy instead of punching holes in it (the log copy is written at once).
 */
export class AuditWriter implements AuditSink {
  readonly writer: string;
  private seq = 0;
  private prev: string;
  private readonly pending: AuditRecord[] = [];
  private pumping: Promise<void> | null = null;
  private failing = false;
  private closed = false;
  private readonly streamKey: string;
  private readonly headsKey: string;

  constructor(
    private readonly redis: Redis,
    prefix: string,
    writerName: string,
    private readonly log: AuditLogger,
    private readonly maxLen = 1_000_000,
    /** Records held while Redis is down before the oldest are dropped (and logged). */
    private readonly maxPending = 100_000,
  ) {
    this.writer = `${writerName}:${randomBytes(4).toString("hex")}`;
    this.prev = genesis(this.writer);
    this.streamKey = auditStreamKey(prefix);
    this.headsKey = auditHeadsKey(prefix);
  }

  record(event: AuditEvent, fields: AuditFields): void {
    const body: Omit<AuditRecord, "hash"> = {
      ...stripUndefined(fields),
      writer: this.writer,
      seq: ++this.seq,
      prev: this.prev,
      ts: new Date().toISOString(),
      event,
    };
    const rec: AuditRecord = { ...body, hash: hashRecord(body) };
    this.prev = rec.hash;
    this.log.info({ audit: rec }, `audit ${event}`);
    this.pending.push(rec);
    if (this.pending.length > this.maxPending) {
      const dropped = this.pending.splice(0, this.pending.length - this.maxPending);
      this.log.error(
        { dropped: dropped.length, fromSeq: dropped[0]?.seq },
        "audit buffer full: oldest records kept only in the log",
      );
    }
    this.pumping ??= this.pump();
  }

  private async pump(): Promise<void> {
    // Let the current tick's records join the first batch.
    await new Promise((r) => setImmediate(r));
    let backoff = 250;
    while (this.pending.length > 0 && !this.closed) {
      const batch = this.pending.slice(0, 500);
      const last = batch[batch.length - 1] as AuditRecord;
      try {
        const m = this.redis.multi();
        for (const r of batch) m.xadd(this.streamKey, "MAXLEN", "~", String(this.maxLen), "*", "r", JSON.stringify(r));
        m.hset(this.headsKey, this.writer, `${last.seq}:${last.hash}`);
        const res = await m.exec();
        const failed = res?.find(([err]) => err);
        if (!res || failed) throw failed?.[0] ?? new Error("audit transaction aborted");
        this.pending.splice(0, batch.length);
        if (this.failing) this.log.info({ backlog: this.pending.length }, "audit stream writes resumed");
        this.failing = false;
        backoff = 250;
      } catch (err) {
        if (!this.failing)
          this.log.error({ err, backlog: this.pending.length }, "audit stream append failed; retrying");
        this.failing = true;
        await new Promise((r) => setTimeout(r, backoff).unref());
        backoff = Math.min(backoff * 2, 5000);
        await this.dropApplied();
      }
    }
    this.pumping = null;
  }

  /**
   * A failed reply does not mean a failed write: Redis may have applied the MULTI and
   * died (or the connection dropped) before answering. The head is written in the same
   * transaction, so it says exactly which records are in; those are not written again.
   */
  private async dropApplied(): Promise<void> {
    try {
      const head = await this.redis.hget(this.headsKey, this.writer);
      const seq = head ? Number(head.split(":")[0]) : 0;
      let n = 0;
      while (n < this.pending.length && (this.pending[n]?.seq ?? Number.POSITIVE_INFINITY) <= seq) n++;
      if (n > 0) this.pending.splice(0, n);
    } catch {
      // Still unreachable: the next attempt fails the same way and checks again.
    }
  }

  /** Resolves when every record so far is in the stream, or after `timeoutMs` (then says how many are log-only). */
  async flush(timeoutMs = 3000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((r) => {
      timer = setTimeout(r, timeoutMs);
    });
    const drained = (async () => {
      while (this.pending.length > 0 && !this.closed) {
        this.pumping ??= this.pump();
        await this.pumping;
      }
    })();
    await Promise.race([drained, deadline]);
    clearTimeout(timer);
    if (this.pending.length > 0) {
      this.log.error({ backlog: this.pending.length }, "audit records not yet in the stream (they are in the log)");
    }
  }

  /** Stops retrying (after a final flush attempt). */
  async close(timeoutMs = 3000): Promise<void> {
    await this.flush(timeoutMs);
    this.closed = true;
  }
}

export const auditStreamKey = (prefix: string) => `${prefix}:audit`;
export const auditHeadsKey = (prefix: string) => `${prefix}:audit:heads`;

function stripUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

export interface VerifyReport {
  ok: boolean;
  records: number;
  writers: number;
  problems: string[];
}

/**
 * Verifies every writer's chain in the stream: hashes recompute, sequence numbers
 * are consecutive, each `prev` is the previous hash, and the last record matches the
 * writer's head. A chain may start after seq 1 only where MAXLEN trimmed it.
 */
export async function verifyAuditStream(redis: Redis, prefix: string): Promise<VerifyReport> {
  const problems: string[] = [];
  const last = new Map<string, AuditRecord>();
  let records = 0;
  let cursor = "-";
  const trimmed = (await redis.xlen(auditStreamKey(prefix))) > 0 && (await firstIsTrimmed(redis, prefix));
  for (;;) {
    const page = await redis.xrange(auditStreamKey(prefix), cursor, "+", "COUNT", 1000);
    if (page.length === 0) break;
    for (const [id, fields] of page) {
      if (id === cursor) continue;
      records++;
      const raw = fields[1];
      let rec: AuditRecord;
      try {
        rec = JSON.parse(raw ?? "") as AuditRecord;
      } catch {
        problems.push(`${id}: not a JSON record`);
        continue;
      }
      const { hash, ...body } = rec;
      if (hashRecord(body) !== hash) problems.push(`${id}: ${rec.writer}#${rec.seq} was edited (hash mismatch)`);
      const before = last.get(rec.writer);
      if (before) {
        if (rec.seq !== before.seq + 1)
          problems.push(`${id}: ${rec.writer} jumps from #${before.seq} to #${rec.seq} (deleted or reordered)`);
        if (rec.prev !== before.hash) problems.push(`${id}: ${rec.writer}#${rec.seq} does not link to #${before.seq}`);
      } else if (rec.seq === 1) {
        if (rec.prev !== genesis(rec.writer)) problems.push(`${id}: ${rec.writer}#1 has a wrong genesis link`);
      } else if (!trimmed) {
        problems.push(`${id}: ${rec.writer} starts at #${rec.seq}; earlier records were deleted`);
      }
      last.set(rec.writer, rec);
    }
    cursor = page[page.length - 1]?.[0] ?? cursor;
    if (page.length < 1000) break;
  }
  const heads = await redis.hgetall(auditHeadsKey(prefix));
  for (const [writer, head] of Object.entries(heads)) {
    const rec = last.get(writer);
    const [seq, hash] = head.split(":");
    if (!rec) {
      if (!trimmed) problems.push(`${writer}: head #${seq} but no records in the stream`);
      continue;
    }
    if (String(rec.seq) !== seq || rec.hash !== hash)
      problems.push(`${writer}: last record #${rec.seq} is not the head #${seq} (tail deleted or edited)`);
  }
  for (const w of last.keys()) if (!(w in heads)) problems.push(`${w}: records with no head (forged writer)`);
  return { ok: problems.length === 0, records, writers: last.size, problems };
}

/** Whether MAXLEN has trimmed the stream (its first entry is not the first ever). */
async function firstIsTrimmed(redis: Redis, prefix: string): Promise<boolean> {
  const info = (await redis.call("XINFO", "STREAM", auditStreamKey(prefix))) as unknown[];
  const i = info.indexOf("entries-added");
  const added = i >= 0 ? Number(info[i + 1]) : 0;
  const len = await redis.xlen(auditStreamKey(prefix));
  return added > len;
}
