import { randomBytes } from "node:crypto";
import type { Cluster, Redis } from "ioredis";
import type { AuditKey } from "./key.js";
import {
  type AuditEvent,
  type AuditFields,
  auditHeadKey,
  auditStreamKey,
  auditWritersKey,
  formatHead,
  formatLease,
  genesis,
  recordBody,
  type SealedRecord,
  sealRecord,
} from "./record.js";
import { pruneExpiredWriters } from "./verify.js";

/**
 * How long a writer's stream and head outlive its last renewal (a live writer renews
 * hourly, idle or not): then they expire and a verifier drops the writer from the
 * writers hash. Bounds what dead writers (every restarted process) leave in Redis.
 */
export const AUDIT_RETENTION_MS = 30 * 24 * 3_600_000;

export interface AuditSink {
  record(event: AuditEvent, fields: AuditFields): void;
}

export interface AuditLogger {
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  /** Whether info lines are written (pino's); when absent, they are. */
  isLevelEnabled?(level: "info"): boolean;
}

/**
 * One round trip of the writer: its records appended to its stream and its head moved to
 * the last one, atomically (one EVALSHA where a MULTI took XADDs + SET + PEXPIREAT +
 * EXEC). The stream's expiry is set only when the writer says (a new chain, a renewed
 * lease, after a failure) or when the stream was missing (XADD NOMKSTREAM answered nil:
 * lost to a failover, deleted): a stream never exists without one for long. An XADD
 * that fails stops the call and leaves the head where it was (the caller drops the
 * records written, so nothing is written twice; the next call's head covers them): a
 * head names a record in the stream, and records past it are what a verifier reading a
 * live stream expects anyway. One head per call, not per record: a head costs an HMAC.
 *
 *   KEYS[1] the stream, KEYS[2] the head
 *   ARGV[1] MAXLEN (~), ARGV[2] expiry (epoch ms), ARGV[3] '1': set the stream's expiry,
 *   ARGV[4] n, ARGV[5] the head naming record n, then ARGV[5 + i] record i (JSON)
 *   Output: {records written, the error that stopped the call or ''}
 */
const APPEND_LUA = `
local maxLen, untilMs, n = ARGV[1], ARGV[2], tonumber(ARGV[4])
local expire = ARGV[3] == '1'
local written, failure = 0, ''
for i = 1, n do
  local rec = ARGV[5 + i]
  local id
  if i == 1 and not expire then
    id = redis.pcall('XADD', KEYS[1], 'NOMKSTREAM', 'MAXLEN', '~', maxLen, '*', 'r', rec)
    if id == false then
      expire = true
      id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', maxLen, '*', 'r', rec)
    end
  else
    id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', maxLen, '*', 'r', rec)
  end
  if type(id) == 'table' and id.err then
    failure = id.err
    break
  end
  written = i
end
if written == n and n > 0 then
  redis.call('SET', KEYS[2], ARGV[5], 'PXAT', untilMs)
elseif failure == '' then
  redis.call('PEXPIREAT', KEYS[2], untilMs)
end
if expire then redis.call('PEXPIREAT', KEYS[1], untilMs) end
return {written, failure}
`;
const APPEND = "citadel:auditAppend";

/**
 * Appends keyed, chained records to this writer's own bounded Redis stream and to the
 * log. Each writer (one per process) numbers its records and links each to the
 * previous one's MAC; its latest (seq, MAC) is kept, MACed too, in its head key so a
 * deleted tail is noticed. Stream and head share a slot of their own (one MULTI), and
 * the writer adds itself to the writers hash before its first record, with a MACed
 * lease saying when its keys may expire. The key is not in Redis: whoever can write
 * Redis cannot recompute a chain.
 *
 * Records are written in order by one pump, many per round trip (one script call, see
 * APPEND_LUA); while Redis is
 * unreachable they wait in a bounded buffer and are retried, so an outage delays the
 * stream copy instead of punching holes in it (the log copy is written at once).
 */
export class AuditWriter implements AuditSink {
  private writerId = "";
  private seq = 0;
  private prev = "";
  private streamKey = "";
  private headKey = "";
  /** When this chain's keys expire (epoch ms), as its lease in the writers hash says; 0: not registered yet. */
  private leaseUntil = 0;
  /** Whether a record of this chain is in Redis, and whether its lease says so. */
  private chainWritten = false;
  private leaseWritten = false;
  private renewDue = false;
  /** The expiry last set on this chain's stream (0: unknown: set it with the next write). */
  private streamExpiry = 0;
  private pruned = false;
  private readonly renewEveryMs: number;
  private readonly renewTimer: NodeJS.Timeout;
  private readonly pending: SealedRecord[] = [];
  private pumping: Promise<void> | null = null;
  private failing = false;
  private closed = false;
  private readonly writersKey: string;
  private readonly baseName: string;

  constructor(
    private readonly redis: Redis | Cluster,
    private readonly prefix: string,
    writerName: string,
    private readonly log: AuditLogger,
    private readonly key: AuditKey,
    /** Entries this writer's stream keeps (XADD MAXLEN ~). */
    private readonly maxLen = 100_000,
    /** Records held while Redis is down before the oldest are dropped (and logged). */
    private readonly maxPending = 100_000,
    private readonly retentionMs = AUDIT_RETENTION_MS,
  ) {
    // Writer ids become hash tags ({<prefix tag>:a:<writer>}): no braces.
    this.baseName = writerName.replace(/[{}]/g, "_");
    this.writersKey = auditWritersKey(prefix);
    const client = redis as unknown as Record<string, unknown>;
    if (typeof client[APPEND] !== "function") redis.defineCommand(APPEND, { numberOfKeys: 2, lua: APPEND_LUA });
    this.startChain();
    this.renewEveryMs = Math.min(3_600_000, Math.max(50, Math.floor(retentionMs / 8)));
    // Idle writers renew too: a live writer's keys never expire.
    this.renewTimer = setInterval(() => {
      if (this.leaseUntil === 0 || this.closed) return;
      this.renewDue = true;
      this.pumping ??= this.pump();
    }, this.renewEveryMs).unref();
  }

  /** A new chain under a fresh writer id (at start, and after a lease lapsed). */
  private startChain(): void {
    this.writerId = `${this.baseName}:${randomBytes(4).toString("hex")}`;
    this.seq = 0;
    this.prev = genesis(this.writerId);
    this.streamKey = auditStreamKey(this.prefix, this.writerId);
    this.headKey = auditHeadKey(this.prefix, this.writerId);
    this.leaseUntil = 0;
    this.streamExpiry = 0;
    this.chainWritten = false;
    this.leaseWritten = false;
  }

  /** This writer's id: the `writer` of its records, its field in the writers hash, its keys' tag. */
  get writer(): string {
    return this.writerId;
  }

  /** Records not yet in the stream (they are in the log). */
  get backlog(): number {
    return this.pending.length;
  }

  record(event: AuditEvent, fields: AuditFields): void {
    const chain = {
      writer: this.writerId,
      seq: ++this.seq,
      prev: this.prev,
      ts: new Date().toISOString(),
      event,
      kid: this.key.kid,
    };
    const sealed = sealRecord(this.key, fields, chain);
    this.prev = sealed.hash;
    // The log copy, built only when it is written (one record per job).
    if (this.log.isLevelEnabled?.("info") !== false)
      this.log.info({ audit: { ...recordBody(fields, chain), hash: sealed.hash } }, `audit ${event}`);
    this.pending.push(sealed);
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
    while (this.due() && !this.closed) {
      try {
        if (!(await this.ensureLease())) continue;
        const batch = this.pending.slice(0, 500);
        if (batch.length > 0 || this.renewDue) {
          const until = this.leaseUntil;
          const args = [String(this.maxLen), String(until), this.renewDue || this.streamExpiry !== until ? "1" : "0"];
          const last = batch.at(-1);
          args.push(String(batch.length), last ? formatHead(this.key, this.writerId, last.seq, last.hash) : "");
          for (const r of batch) args.push(r.json);
          const append = (this.redis as unknown as Record<string, (...a: string[]) => Promise<[number, string]>>)[
            APPEND
          ];
          const [written, failure] = (await append?.call(this.redis, this.streamKey, this.headKey, ...args)) ?? [
            0,
            "audit script not defined",
          ];
          this.pending.splice(0, written);
          if (written > 0) this.chainWritten = true;
          if (failure) throw new Error(failure);
          this.streamExpiry = until;
          this.renewDue = false;
        }
        if (this.chainWritten && !this.leaseWritten) {
          await this.writeLease(this.leaseUntil, true);
          this.leaseWritten = true;
        }
        if (this.failing) this.log.info({ backlog: this.pending.length }, "audit stream writes resumed");
        this.failing = false;
        backoff = 250;
      } catch (err) {
        if (!this.failing)
          this.log.error({ err, backlog: this.pending.length }, "audit stream append failed; retrying");
        this.failing = true;
        // Redis may have lost the stream (a failover): its expiry is set again with the next write.
        this.streamExpiry = 0;
        await new Promise((r) => setTimeout(r, backoff).unref());
        backoff = Math.min(backoff * 2, 5000);
        await this.dropApplied();
      }
    }
    this.pumping = null;
  }

  private due(): boolean {
    return this.pending.length > 0 || this.renewDue || (this.chainWritten && !this.leaseWritten);
  }

  /**
   * Registers this chain before its first record and renews its lease before the keys'
   * expiry is extended, so the lease in the writers hash never ends before the keys do.
   * A lease this close to its end is not renewed: a verifier may be dropping it (its
   * keys expired or are about to), so the writer starts a new chain instead and its
   * unwritten records stay in the log only. False when there is nothing to write yet.
   */
  private async ensureLease(): Promise<boolean> {
    const now = Date.now();
    if (this.leaseUntil !== 0 && now >= this.leaseUntil - 2 * this.renewEveryMs) {
      const dropped = this.pending.splice(0);
      this.log.error(
        { writer: this.writerId, dropped: dropped.length, fromSeq: dropped[0]?.seq },
        "audit lease lapsed (Redis unreachable for long): a new chain starts; unwritten records are in the log only",
      );
      this.startChain();
      this.renewDue = false;
      return false;
    }
    if (this.leaseUntil === 0 && this.pending.length === 0) {
      this.renewDue = false;
      return false;
    }
    if (this.leaseUntil === 0 || now >= this.leaseUntil - this.retentionMs + this.renewEveryMs) {
      const until = now + this.retentionMs;
      const first = this.leaseUntil === 0 && !this.pruned;
      await this.writeLease(until, this.chainWritten);
      this.leaseUntil = until;
      if (first) this.pruneOnce();
      if (this.chainWritten) this.leaseWritten = true;
    }
    return true;
  }

  /**
   * Once per process: drops this role's writers whose leases ended and whose keys
   * expired (dead processes), so the writers hash stays bounded even where nobody runs
   * verify. Only this role's: its key verifies their leases, and the ACL lets it read
   * their keys. Off the write path; a failure is logged and left to verify.
   */
  private pruneOnce(): void {
    this.pruned = true;
    const role = `${this.baseName.split(":")[0] ?? this.baseName}:`;
    pruneExpiredWriters(this.redis, this.prefix, [this.key], (w) => w.startsWith(role)).then(
      (n) => {
        if (n > 0) this.log.info({ dropped: n }, "audit: expired writers dropped from the writers hash");
      },
      (err: unknown) => this.log.error({ err }, "audit: dropping expired writers failed (verify does it too)"),
    );
  }

  private async writeLease(until: number, written: boolean): Promise<void> {
    await this.redis.hset(this.writersKey, this.writerId, formatLease(this.key, this.writerId, until, written));
  }

  /**
   * A failed reply does not mean a failed write: Redis may have applied the MULTI and
   * died (or the connection dropped) before answering. The head is written in the same
   * transaction, so it says exactly which records are in; those are not written again.
   */
  private async dropApplied(): Promise<void> {
    try {
      const head = await this.redis.get(this.headKey);
      const seq = head ? Number(head.split(":")[0]) : 0;
      if (seq > 0) this.chainWritten = true;
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
    clearInterval(this.renewTimer);
    await this.flush(timeoutMs);
    this.closed = true;
  }
}
