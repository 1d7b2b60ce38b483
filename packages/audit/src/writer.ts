import { randomBytes } from "node:crypto";
import type { Cluster, Redis } from "ioredis";
import type { AuditKey } from "./key.js";
import {
  type AuditEvent,
  type AuditFields,
  type AuditRecord,
  auditHeadsKey,
  auditStreamKey,
  formatHead,
  genesis,
  macRecord,
} from "./record.js";

export interface AuditSink {
  record(event: AuditEvent, fields: AuditFields): void;
}

export interface AuditLogger {
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/**
 * Appends keyed, chained records to a bounded Redis stream and to the log. Each writer
 * (one per process) numbers its records and links each to the previous one's MAC;
 * its latest (seq, MAC) is kept, MACed too, in a heads hash so a deleted tail is
 * noticed. The key is not in Redis: whoever can write Redis cannot recompute a chain.
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
    private readonly redis: Redis | Cluster,
    prefix: string,
    writerName: string,
    private readonly log: AuditLogger,
    private readonly key: AuditKey,
    private readonly maxLen = 1_000_000,
    /** Records held while Redis is down before the oldest are dropped (and logged). */
    private readonly maxPending = 100_000,
  ) {
    this.writer = `${writerName}:${randomBytes(4).toString("hex")}`;
    this.prev = genesis(this.writer);
    this.streamKey = auditStreamKey(prefix);
    this.headsKey = auditHeadsKey(prefix);
  }

  /** Records not yet in the stream (they are in the log). */
  get backlog(): number {
    return this.pending.length;
  }

  record(event: AuditEvent, fields: AuditFields): void {
    const body: Omit<AuditRecord, "hash"> = {
      ...stripUndefined(fields),
      writer: this.writer,
      seq: ++this.seq,
      prev: this.prev,
      ts: new Date().toISOString(),
      event,
      kid: this.key.kid,
    };
    const rec: AuditRecord = { ...body, hash: macRecord(this.key, body) };
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
        m.hset(this.headsKey, this.writer, formatHead(this.key, this.writer, last.seq, last.hash));
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

function stripUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
