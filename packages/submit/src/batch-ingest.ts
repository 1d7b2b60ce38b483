import type { AuditSink } from "@citadel/audit";
import { BatchLine, CitadelError, coerceError } from "@citadel/contracts";
import type { JobQueues } from "@citadel/queue";
import type { Logger } from "@citadel/telemetry";
import type { BatchStore, LineEntry } from "./batches.js";
import { type CallbackPolicy, notifyFor } from "./callbacks.js";
import { type JsonLine, jsonLines } from "./jsonl.js";
import { type Accepted, asCitadel, type SubmitContext, type SubmitRequest, type Submitter } from "./submit.js";

export interface BatchLimits {
  /** The whole file (413 past it, while it streams). */
  maxBytes: number;
  /** One line (a longer line is refused alone, PAYLOAD_TOO_LARGE). */
  maxLineBytes: number;
  /** Request lines in one batch (413 past it). */
  maxLines: number;
  /** Lines submitted together (one submitMany). */
  chunkLines: number;
}

export interface BatchDeps {
  submitter: Submitter;
  store: BatchStore;
  queues: JobQueues;
  audit: AuditSink;
  log: Logger;
  /** Parses one line's bytes as strictly as a JSON body (UTF-8, depth, duplicate and prototype keys). */
  parseLine: (bytes: Buffer) => unknown;
  /** Completion webhooks (a batch's `callback`, its tenant's callback URL). */
  callbacks?: CallbackPolicy;
}

/** A line ready to submit, or refused before it could be. */
type Parsed = { line: number; customId?: string | undefined } & ({ req: SubmitRequest } | { error: CitadelError });

/** Rounds of waiting out a sample-rate refusal before a line is refused with it, and the longest wait of one. */
const RATE_RETRIES = 5;
const RATE_WAIT_MAX_MS = 5000;

/**
 * Batches (POST /v1/batches): a JSONL file read as it streams, each line submitted
 * through the same path as POST /v1/jobs (validation, rate limits, quota, audit) in
 * chunks as lines arrive. A line that cannot become a job is refused alone, recorded
 * with its number and code; only the file's own bounds refuse the batch (413). An
 * ingest that does not finish (413, the client gone, a failure of ours) cancels what it
 * queued: no one holds the batch's id to read its results.
 */
export class Batches {
  constructor(
    private readonly d: BatchDeps,
    private readonly limits: BatchLimits,
  ) {}

  /** Reads a batch file into jobs; `callback`: the URL its completion is notified to (else its tenant's own, if any). */
  async ingest(
    source: AsyncIterable<Buffer | string>,
    ctx: SubmitContext,
    opts: { callback?: string | undefined } = {},
  ): Promise<string> {
    const tenant = ctx.tenant.id;
    const notify = await notifyFor(ctx.tenant, opts.callback, this.d.callbacks);
    const id = await this.d.store.create(tenant, ctx.requestId, notify);
    const seen = new Map<string, number>();
    let chunk: Parsed[] = [];
    let lines = 0;
    try {
      for await (const l of jsonLines(source, this.limits)) {
        if (++lines > this.limits.maxLines) {
          throw new CitadelError("PAYLOAD_TOO_LARGE", `a batch holds at most ${this.limits.maxLines} lines`, {
            limit: this.limits.maxLines,
          });
        }
        chunk.push(this.parse(l, id, seen));
        if (chunk.length >= this.limits.chunkLines) {
          const { cancel } = await this.flush(ctx, id, chunk);
          chunk = [];
          if (cancel) return id;
        }
      }
      const { cancel } = await this.flush(ctx, id, chunk);
      if (!cancel) await this.d.store.seal(tenant, id);
      return id;
    } catch (err) {
      const e = asCitadel(err);
      await this.cancel(ctx, id).catch((c: unknown) => {
        this.d.log.error({ err: coerceError(c), batch: id }, "could not cancel a batch whose ingest failed");
      });
      throw new CitadelError(e.code, e.message, { ...e.details, batch: id }, { cause: err });
    }
  }

  /**
   * Cancels a batch: marks it (an ingest still running stops at its next chunk and
   * cancels that chunk itself), then cancels every job of it not final yet as
   * DELETE /v1/jobs/:id does: a queued one is removed (its line recorded cancelled), an
   * active one is flagged and its worker settles it.
   */
  async cancel(ctx: SubmitContext, id: string): Promise<void> {
    await this.d.store.markCancelled(ctx.tenant.id, id);
    for await (const ids of this.d.store.pendingJobs(ctx.tenant.id, id)) await this.cancelJobs(ctx, ids);
    await this.d.store.cancelled(ctx.tenant.id, id);
  }

  private async cancelJobs(ctx: SubmitContext, ids: string[]): Promise<void> {
    await Promise.all(
      ids.map(async (jobId) => {
        try {
          const r = await this.d.queues.cancel(jobId, ctx.tenant.id);
          if (!r.removed) return;
          this.d.audit.record("job.cancelled", {
            tenant: ctx.tenant.id,
            clientIp: ctx.clientIp,
            requestId: ctx.requestId,
            jobId,
            model: r.removed.model,
            version: r.removed.version,
            outcome: "cancelled",
          });
        } catch (err) {
          // A job already gone (its model unpublished, its retention over) has nothing left to cancel.
          if (err instanceof CitadelError && err.code === "JOB_NOT_FOUND") return;
          throw err;
        }
      }),
    );
  }

  private parse(l: JsonLine, batch: string, seen: Map<string, number>): Parsed {
    if ("tooLong" in l) {
      return {
        line: l.line,
        error: new CitadelError("PAYLOAD_TOO_LARGE", `line is ${l.tooLong} bytes, over ${this.limits.maxLineBytes}`),
      };
    }
    let doc: unknown;
    try {
      doc = this.d.parseLine(l.bytes);
    } catch (err) {
      return { line: l.line, error: asCitadel(err) };
    }
    const named = customIdOf(doc);
    const p = BatchLine.safeParse(doc);
    if (!p.success) {
      const issue = p.error.issues[0];
      const where = issue?.path.join(".") || "line";
      return {
        line: l.line,
        customId: named,
        error: new CitadelError("VALIDATION_FAILED", `${where}: ${issue?.message}`),
      };
    }
    const { custom_id, body } = p.data;
    if (body.custom_id !== undefined && body.custom_id !== custom_id) {
      return {
        line: l.line,
        customId: custom_id,
        error: new CitadelError("VALIDATION_FAILED", "body.custom_id differs from the line's custom_id"),
      };
    }
    const first = seen.get(custom_id);
    if (first !== undefined) {
      return {
        line: l.line,
        customId: custom_id,
        error: new CitadelError("VALIDATION_FAILED", `custom_id '${custom_id}' is already used by line ${first}`),
      };
    }
    seen.set(custom_id, l.line);
    return { line: l.line, customId: custom_id, req: { ...body, custom_id, batchRef: { id: batch, line: l.line } } };
  }

  /** Submits a chunk's valid lines, records every line of it, and answers whether the batch was cancelled meanwhile. */
  private async flush(ctx: SubmitContext, id: string, chunk: Parsed[]): Promise<{ cancel: boolean }> {
    const valid = chunk.flatMap((p) => ("req" in p ? [p] : []));
    const answers = await this.submit(
      ctx,
      valid.map((v) => v.req),
    );
    const byLine = new Map(valid.map((v, i) => [v.line, answers[i]]));
    const entries: LineEntry[] = chunk.map((p) => {
      const a = byLine.get(p.line);
      const base = { line: p.line, customId: p.customId };
      if ("error" in p) return { ...base, error: p.error };
      if (!a) return { ...base, error: new CitadelError("INTERNAL", "internal error") };
      return "error" in a ? { ...base, error: a.error } : { ...base, jobId: a.id };
    });
    this.d.submitter.rejectedItems(
      ctx,
      entries.flatMap((e) => ("error" in e ? [{ model: modelOf(chunk, e.line), error: e.error }] : [])),
    );
    const r = await this.d.store.addLines(ctx.tenant.id, id, entries);
    if (r.cancel) {
      // A cancel that walked the lines before these were recorded did not see them.
      await this.cancelJobs(
        ctx,
        entries.flatMap((e) => ("jobId" in e ? [e.jobId] : [])),
      );
    }
    return r;
  }

  /**
   * submitMany, made fit for a stream: a chunk refused whole (its samples over the
   * tenant's burst) is split until each part stands alone; lines refused by the sample
   * rate wait it out a few rounds before they are refused with it.
   */
  private async submit(ctx: SubmitContext, reqs: SubmitRequest[]): Promise<(Accepted | { error: CitadelError })[]> {
    if (reqs.length === 0) return [];
    let out: (Accepted | { error: CitadelError })[];
    try {
      out = await this.d.submitter.submitMany(reqs, ctx);
    } catch (err) {
      const e = asCitadel(err);
      if (reqs.length === 1) return [{ error: e }];
      const half = Math.ceil(reqs.length / 2);
      return [...(await this.submit(ctx, reqs.slice(0, half))), ...(await this.submit(ctx, reqs.slice(half)))];
    }
    for (let round = 0; round < RATE_RETRIES; round++) {
      const waiting = out.flatMap((a, i) => ("error" in a && rateWait(a.error) !== undefined ? [i] : []));
      if (waiting.length === 0) break;
      const wait = Math.max(...waiting.map((i) => rateWait((out[i] as { error: CitadelError }).error) ?? 0));
      await new Promise((r) => setTimeout(r, Math.min(wait, RATE_WAIT_MAX_MS)));
      const again = await this.d.submitter
        .submitMany(
          waiting.map((i) => reqs[i] as SubmitRequest),
          ctx,
        )
        .catch((err: unknown) => waiting.map(() => ({ error: asCitadel(err) })));
      waiting.forEach((i, k) => {
        const a = again[k];
        if (a) out[i] = a;
      });
    }
    return out;
  }
}

/** How long a sample-rate refusal asks to wait, when waiting can help. */
function rateWait(e: CitadelError): number | undefined {
  if (e.code !== "RATE_LIMITED" || e.details?.retryable === false) return undefined;
  const ms = e.details?.retryAfterMs;
  return typeof ms === "number" ? ms : undefined;
}

/** A refused line's custom_id, when it has a usable one (so its result can be keyed by it). */
function customIdOf(doc: unknown): string | undefined {
  if (typeof doc !== "object" || doc === null || !("custom_id" in doc)) return undefined;
  const c = (doc as { custom_id: unknown }).custom_id;
  return typeof c === "string" && c.length >= 1 && c.length <= 128 ? c : undefined;
}

function modelOf(chunk: Parsed[], line: number): string | undefined {
  const p = chunk.find((c) => c.line === line);
  return p && "req" in p ? p.req.model : undefined;
}
