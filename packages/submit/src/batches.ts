import { randomBytes } from "node:crypto";
import {
  type BatchCounts,
  type BatchResultLine,
  type BatchStatus,
  type BatchView,
  CitadelError,
  type JobData,
  type JobResult,
} from "@citadel/contracts";
import { keys, NOTIFICATIONS_MAX_LEN, parseFailure, type RedisConn, scripts } from "@citadel/queue";

/**
 * Where a batch lives (docs/api.md "Batches"): three keys under the deployment's
 * prefix, scoped by tenant (another tenant's id names a key that does not exist), all
 * expiring at the batch's retention end:
 *
 * - `batch:<tenant>:<id>`: a hash of its state and counters (created, completeBy,
 *   sealed, cancel, total, accepted, refused, last, completed, failed, cancelled; and
 *   for a batch whose completion is notified, notify — 'tenant' or the URL it named —
 *   and notified, set once its notification is recorded);
 * - `…:lines`: line -> `{"c":custom_id,"j":job id}` for a line that became a job, or
 *   `{"c","e":{code,message}}` for one refused; written by the API as it ingests;
 * - `…:results`: line -> the job's final outcome, written once per line by the
 *   batchRecord script: by the worker, in the same pipeline that settles the job, or
 *   by a cancel that removes the queued job. The API only reads it.
 *
 * Outcomes are recorded where jobs become final, not by an API watching events: an API
 * replica can die at any time, and an event read by none (or by two) would be a result
 * lost (or counted twice). HSETNX per line makes each line count once.
 */
export interface BatchStoreSettings {
  prefix: string;
  /** How long a batch and its results are kept after it is created. */
  ttlMs: number;
  /** How long an accepted job may wait to start (its deadline). */
  queueTtlMs: number;
  /** Added to the last job's deadline for the completion window: the longest a started job may still take. */
  runGraceMs: number;
}

/** A line's entry as the API records it at ingest. */
export type LineEntry = { line: number; customId?: string | undefined } & ({ jobId: string } | { error: CitadelError });

const ID = /^batch_[A-Za-z0-9_-]{16,64}$/;

export class BatchStore {
  constructor(
    private readonly redis: RedisConn,
    private readonly s: BatchStoreSettings,
  ) {}

  private k(tenant: string, id: string) {
    const p = this.s.prefix;
    return {
      meta: keys.batch(p, tenant, id),
      lines: keys.batchLines(p, tenant, id),
      results: keys.batchResults(p, tenant, id),
    };
  }

  /** A new, empty batch (in progress, not sealed): its id. `notify`: where its completion is to be notified. */
  async create(tenant: string, requestId: string, notify?: JobData["notify"]): Promise<string> {
    const id = `batch_${randomBytes(18).toString("base64url")}`;
    const now = Date.now();
    const k = this.k(tenant, id);
    await this.redis
      .multi()
      .hset(k.meta, {
        created: now,
        expires: now + this.s.ttlMs,
        completeBy: now + this.s.queueTtlMs + this.s.runGraceMs,
        requestId,
        sealed: 0,
        cancel: 0,
        total: 0,
        accepted: 0,
        refused: 0,
        last: 0,
        ...(notify ? { notify: notify.url ?? "tenant" } : {}),
      })
      .pexpireat(k.meta, now + this.s.ttlMs)
      .exec()
      .then(check);
    return id;
  }

  /**
   * Records ingested lines and moves the counters and the completion window; answers
   * whether the batch has been asked to cancel meanwhile (the ingest then cancels the
   * jobs it just queued and stops).
   */
  async addLines(tenant: string, id: string, entries: LineEntry[]): Promise<{ cancel: boolean }> {
    const k = this.k(tenant, id);
    const expires = await this.expiresAt(k.meta);
    const accepted = entries.filter((e) => "jobId" in e).length;
    const last = entries.reduce((m, e) => Math.max(m, e.line), 0);
    const m = this.redis.multi();
    if (entries.length > 0) {
      m.hset(
        k.lines,
        Object.fromEntries(
          entries.map((e) => [
            String(e.line),
            JSON.stringify({
              ...(e.customId !== undefined ? { c: e.customId } : {}),
              ...("jobId" in e ? { j: e.jobId } : { e: { code: e.error.code, message: e.error.message } }),
            }),
          ]),
        ),
      );
      m.pexpireat(k.lines, expires);
      m.hincrby(k.meta, "total", entries.length);
      m.hincrby(k.meta, "accepted", accepted);
      m.hincrby(k.meta, "refused", entries.length - accepted);
      m.hset(k.meta, "last", last);
      if (accepted > 0) m.hset(k.meta, "completeBy", Date.now() + this.s.queueTtlMs + this.s.runGraceMs);
    }
    m.hget(k.meta, "cancel");
    const replies = check(await m.exec());
    return { cancel: replies[replies.length - 1] === "1" };
  }

  /**
   * The ingest is over: the batch completes once every accepted line is final. Its
   * completion is notified here when its lines are final already (else by the record of
   * its last line).
   */
  async seal(tenant: string, id: string): Promise<void> {
    await this.settled(tenant, id, true);
  }

  /** After a cancel walked the batch's jobs: a batch whose lines were all final by then is notified now. */
  async cancelled(tenant: string, id: string): Promise<void> {
    await this.settled(tenant, id, false);
  }

  private async settled(tenant: string, id: string, seal: boolean): Promise<void> {
    await scripts(this.redis).batchSettled([this.k(tenant, id).meta, keys.notifications(this.s.prefix)], {
      tenant,
      batchId: id,
      maxLen: NOTIFICATIONS_MAX_LEN,
      seal,
    });
  }

  /** Marks the batch cancelled (404 when there is none): the caller then cancels its jobs. */
  async markCancelled(tenant: string, id: string): Promise<void> {
    const k = this.k(tenant, id);
    const replies = check(await this.redis.multi().exists(k.meta).hset(k.meta, "cancel", 1).exec());
    if (replies[0] !== 1) {
      // The HSET just created a key without expiry: remove it.
      await this.redis.del(k.meta);
      throw notFound();
    }
  }

  async view(tenant: string, id: string): Promise<BatchView> {
    if (!ID.test(id)) throw notFound();
    const h = await this.redis.hgetall(this.k(tenant, id).meta);
    if (!h.created) throw notFound();
    const n = (f: string) => Number(h[f] ?? 0);
    const counts: BatchCounts = {
      total: n("total"),
      accepted: n("accepted"),
      refused: n("refused"),
      completed: n("completed"),
      failed: n("failed"),
      cancelled: n("cancelled"),
    };
    const final = counts.completed + counts.failed + counts.cancelled;
    const done = final >= counts.accepted;
    let status: BatchStatus;
    if (h.cancel === "1") status = done ? "cancelled" : "cancelling";
    else if (h.sealed === "1" && done) status = "completed";
    else if (Date.now() > n("completeBy")) status = "expired";
    else status = "in_progress";
    return {
      id,
      object: "batch",
      status,
      counts,
      createdAt: new Date(n("created")).toISOString(),
      completeBy: new Date(n("completeBy")).toISOString(),
      expiresAt: new Date(n("expires")).toISOString(),
    };
  }

  /** Job ids of the batch's lines not final yet, a page at a time (a cancel walks them). */
  async *pendingJobs(tenant: string, id: string): AsyncGenerator<string[]> {
    const k = this.k(tenant, id);
    let cursor = "0";
    do {
      const [next, flat] = await this.redis.hscan(k.lines, cursor, "COUNT", 500);
      cursor = next;
      const lines: string[] = [];
      const ids: string[] = [];
      for (let i = 0; i + 1 < flat.length; i += 2) {
        const j = (JSON.parse(flat[i + 1] as string) as { j?: string }).j;
        if (j) {
          lines.push(flat[i] as string);
          ids.push(j);
        }
      }
      if (ids.length === 0) continue;
      const done = await this.redis.hmget(k.results, ...lines);
      yield ids.filter((_, i) => done[i] === null);
    } while (cursor !== "0");
  }

  /**
   * Every line of the batch file that was a request, in order: its outcome, or
   * `pending`. Read a page at a time, so a large batch streams in bounded memory.
   */
  async *results(tenant: string, id: string, page = 256): AsyncGenerator<BatchResultLine> {
    if (!ID.test(id)) throw notFound();
    const k = this.k(tenant, id);
    const last = await this.redis.hget(k.meta, "last");
    if (last === null) throw notFound();
    for (let from = 1; from <= Number(last); from += page) {
      const nums = Array.from({ length: Math.min(page, Number(last) - from + 1) }, (_, i) => String(from + i));
      const [lines, done] = await Promise.all([
        this.redis.hmget(k.lines, ...nums),
        this.redis.hmget(k.results, ...nums),
      ]);
      for (const [i, num] of nums.entries()) {
        const entry = lines[i] ? (JSON.parse(lines[i]) as StoredLine) : undefined;
        const outcome = done[i] ? (JSON.parse(done[i]) as StoredOutcome) : undefined;
        // A line with neither was blank (or its ingest died before recording it and no job came of it).
        if (!entry && !outcome) continue;
        yield resultLine(Number(num), entry, outcome);
      }
    }
  }

  private async expiresAt(meta: string): Promise<number> {
    const at = await this.redis.hget(meta, "expires");
    if (at === null) throw notFound();
    return Number(at);
  }
}

interface StoredLine {
  c?: string;
  j?: string;
  e?: { code: string; message: string };
}

/** What batchRecord-4.lua writes: job id, custom_id, finish time, status, and the raw result or failure reason. */
interface StoredOutcome {
  j: string;
  c?: string;
  f: number;
  s: "completed" | "failed" | "cancelled";
  r?: JobResult;
  e?: string;
}

function resultLine(line: number, entry: StoredLine | undefined, outcome: StoredOutcome | undefined): BatchResultLine {
  const custom = entry?.c ?? outcome?.c;
  const base = { ...(custom !== undefined ? { custom_id: custom } : {}), line };
  if (entry?.e) return { ...base, status: "refused", error: entry.e };
  const id = entry?.j ?? outcome?.j;
  const withId = { ...base, ...(id ? { id } : {}) };
  if (!outcome) return { ...withId, status: "pending" };
  const finishedAt = new Date(outcome.f).toISOString();
  if (outcome.s === "completed" && outcome.r) {
    const { workerId: _w, artifactSha256: _a, at: _t, ...result } = outcome.r;
    return { ...withId, status: "completed", finishedAt, result };
  }
  if (outcome.s === "cancelled" && !outcome.e) {
    return {
      ...withId,
      status: "cancelled",
      finishedAt,
      error: { code: "CANCELLED", message: "the batch was cancelled" },
    };
  }
  return { ...withId, status: outcome.s, finishedAt, error: parseFailure(outcome.e) };
}

function notFound(): CitadelError {
  return new CitadelError("BATCH_NOT_FOUND", "no such batch");
}

/** A MULTI's replies, throwing the first error. */
function check(replies: [Error | null, unknown][] | null): unknown[] {
  if (!replies) throw new Error("transaction aborted");
  return replies.map(([err, v]) => {
    if (err) throw err;
    return v;
  });
}
