import { CitadelError, type JobView } from "@citadel/contracts";
import { isFinal, type JobQueues } from "@citadel/queue";
import { type Accepted, asCitadel, type SubmitContext, type SubmitRequest, type Submitter } from "@citadel/submit";
import type { Tenant } from "@citadel/tenants";
import { release } from "@citadel/tensors";
import type { FastifyRequest } from "fastify";

/** The submit context of an authenticated request: its tenant, ids and Idempotency-Key. */
export function submitContext(req: FastifyRequest): SubmitContext {
  const idem = req.headers["idempotency-key"];
  if (idem !== undefined && (typeof idem !== "string" || idem.length < 1 || idem.length > 200)) {
    throw new CitadelError("VALIDATION_FAILED", "Idempotency-Key must be 1-200 characters");
  }
  return {
    tenant: req.tenant as Tenant,
    requestId: req.id,
    clientIp: req.ip,
    ...(idem ? { idempotencyKey: idem } : {}),
  };
}

/** The job's view once final within `ms`, else undefined (the job stands accepted whatever the wait meets). */
export async function finalWithin(
  queues: JobQueues,
  req: FastifyRequest,
  a: Accepted,
  ms: number,
  /** The request's own custom_id and metadata, which a view built from the completion event shows. */
  labels: Pick<JobView, "custom_id" | "metadata"> = {},
): Promise<JobView | undefined> {
  try {
    // A job this request queued (or a replay that found it queued) is not final yet: no read before waiting.
    const submitted = a.status === "queued" ? { submitted: { version: a.version, ...labels } } : {};
    const view = await queues.waitForFinish(a.id, (req.tenant as Tenant).id, ms, submitted);
    return isFinal(view.status) ? view : undefined;
  } catch (err) {
    req.log.warn({ err, jobId: a.id }, "waiting for a submitted job failed; answering that it is not final");
    return undefined;
  }
}

/**
 * Submits one job; a refusal is recorded (metrics, one job.rejected record) before it
 * is thrown, so the request's own audit hook does not record it again.
 */
export async function submitOneRecorded(
  submitter: Submitter,
  req: FastifyRequest,
  job: SubmitRequest,
  ctx: SubmitContext,
): Promise<Accepted> {
  try {
    return await submitter.submitOne(job, ctx);
  } catch (err) {
    const e = asCitadel(err);
    submitter.rejected(ctx, job.model, e);
    req.audited = true;
    throw e;
  }
}

/**
 * Drops a submit's body once its job is stored, before a long-poll: a request waiting
 * for its result (up to MAX_WAIT_MS) would otherwise hold its tensors, so clients
 * waiting on large inputs would hold MBs each in the API's memory. A binary body
 * (binary-reader.ts) is freed at once (release.ts: its memory would otherwise wait for
 * a mark-compact of the whole heap). Only after a submit that succeeded: its input bytes
 * are in Redis and no write of them is still in flight, which a failed one cannot say.
 */
export function releaseBody(req: FastifyRequest): void {
  const body = req.body;
  req.body = undefined;
  if (Buffer.isBuffer(body)) release(body);
}
