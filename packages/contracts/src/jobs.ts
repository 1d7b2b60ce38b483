import { z } from "zod";
import { CallbackUrl } from "./callback.js";
import { ErrorCode } from "./errors.js";
import { ModelName, ModelVersion, OutputPolicy } from "./manifest.js";
import { LIMITS, TensorPayload } from "./tensor.js";

export const Priority = z.enum(["high", "normal", "low"]);
export type Priority = z.infer<typeof Priority>;

/**
 * A client's own name for a job (OpenAI Batch API's `custom_id`), echoed in its view and
 * keying a batch's results. Job data is small: bounded here.
 */
export const CustomId = z.string().min(1).max(128);
export type CustomId = z.infer<typeof CustomId>;

/** Small string metadata a client attaches to a job (as OpenAI's): at most 16 keys of 64 characters, values of 256. */
export const JobMetadata = z
  .record(z.string().min(1).max(64), z.string().max(256))
  .refine((m) => Object.keys(m).length <= 16, { message: "at most 16 metadata keys" });
export type JobMetadata = z.infer<typeof JobMetadata>;

/** The batch a job belongs to and its line in the batch's file (1-based); the worker records its outcome there. */
export const BatchRef = z.strictObject({
  id: z.string().regex(/^batch_[A-Za-z0-9_-]{16,64}$/),
  line: z.number().int().min(1),
});
export type BatchRef = z.infer<typeof BatchRef>;

/** POST /v1/jobs body. Unknown fields are refused. */
export const JobRequest = z.strictObject({
  model: ModelName,
  version: ModelVersion.optional(),
  inputs: z
    .record(z.string().min(1).max(256), TensorPayload)
    .refine((r) => Object.keys(r).length <= LIMITS.maxInputsPerJob, {
      message: `at most ${LIMITS.maxInputsPerJob} inputs`,
    }),
  outputs: z.array(z.string().min(1).max(256)).max(32).optional(),
  timeoutMs: z.number().int().min(1).optional(),
  priority: Priority.default("normal"),
  custom_id: CustomId.optional(),
  metadata: JobMetadata.optional(),
  /**
   * Where to notify this job's outcome (a signed webhook), instead of the tenant's own
   * callback URL: only for a tenant allowed to name one per request.
   */
  callback: CallbackUrl.optional(),
});
export type JobRequest = z.infer<typeof JobRequest>;

/** A tensor after validation: always base64 little-endian on the queue. */
export const EncodedTensor = z.strictObject({
  dtype: TensorPayload.shape.dtype,
  shape: z.array(z.number().int().min(0)),
  data: z.string(),
});
export type EncodedTensor = z.infer<typeof EncodedTensor>;

/**
 * A queued input, described: its bytes are not in the job data but stored once as raw
 * little-endian bytes beside the job (inputs in this order, back to back), so status
 * reads, the board and every BullMQ script that copies job data never carry tensors.
 */
export const InputMeta = z.strictObject({
  name: z.string().min(1).max(256),
  dtype: TensorPayload.shape.dtype,
  shape: z.array(z.number().int().min(0).max(LIMITS.maxDim)).max(LIMITS.maxRank),
});
export type InputMeta = z.infer<typeof InputMeta>;

/**
 * What the API puts on the queue. Workers re-validate it and the stored input bytes
 * against the manifest: Redis is a trust boundary. The tenant who owns a job is here,
 * in data the API wrote, not in the job's name.
 */
export const JobData = z.strictObject({
  tenant: z.string().min(1),
  model: ModelName,
  version: ModelVersion,
  inputs: z.array(InputMeta).max(LIMITS.maxInputsPerJob),
  outputs: z.array(z.string()).optional(),
  /** Samples along the batch axis (1 for a model without one). */
  batch: z.number().int().min(1),
  inputBytes: z.number().int().min(0),
  timeoutMs: z.number().int().min(1),
  acceptedAt: z.number().int(),
  /** Epoch ms after which the job must not start. */
  deadline: z.number().int(),
  requestId: z.string(),
  clientIp: z.string().optional(),
  outputPolicy: OutputPolicy.optional(),
  customId: CustomId.optional(),
  metadata: JobMetadata.optional(),
  batchRef: BatchRef.optional(),
  /**
   * The job's outcome is notified (a signed webhook, sent by the API's notifier): to
   * `url` when the request named one, else to its tenant's callback URL. The worker
   * only records that the job ended; it holds no webhook secret.
   */
  notify: z.strictObject({ url: CallbackUrl.optional() }).optional(),
});
export type JobData = z.infer<typeof JobData>;

/** A job's return value in Redis. */
export const JobResult = z.strictObject({
  outputs: z.record(z.string(), EncodedTensor),
  provider: z.string(),
  /** This job's own samples (never the run's size, which would reveal other tenants' volume). */
  batchSize: z.number().int(),
  queueMs: z.number(),
  inferenceMs: z.number(),
  workerId: z.string(),
  artifactSha256: z.string(),
  /**
   * When the job was created, started and finished (epoch ms), as BullMQ records them:
   * a waiter builds the job's final view from the completion event alone, without
   * reading the job back. Not part of the view's result (the view has its own fields).
   */
  at: z.strictObject({ created: z.number().int(), started: z.number().int(), finished: z.number().int() }).optional(),
});
export type JobResult = z.infer<typeof JobResult>;

export const JobStatus = z.enum(["queued", "active", "completed", "failed", "cancelled"]);
export type JobStatus = z.infer<typeof JobStatus>;

/** GET /v1/jobs/:id */
export const JobView = z.object({
  id: z.string(),
  status: JobStatus,
  model: z.string(),
  version: z.string(),
  createdAt: z.string(),
  startedAt: z.string().optional(),
  finishedAt: z.string().optional(),
  custom_id: z.string().optional(),
  metadata: z.record(z.string(), z.string()).optional(),
  result: JobResult.omit({ workerId: true, artifactSha256: true, at: true }).optional(),
  error: z.object({ code: ErrorCode.or(z.string()), message: z.string() }).optional(),
});
export type JobView = z.infer<typeof JobView>;

/** POST /v1/jobs (202): "queued" for a new job; an Idempotency-Key replay answers with its job's current status. */
export const JobAccepted = z.object({ id: z.string(), status: JobStatus, model: z.string(), version: z.string() });
export type JobAccepted = z.infer<typeof JobAccepted>;

/** DELETE /v1/jobs/{id} (202): `cancelled`, `cancelling` for a running job, or the final status it already had. */
export const JobCancelStatus = z.enum(["cancelling", ...JobStatus.options]);
export const JobCancelled = z.object({ id: z.string(), status: JobCancelStatus });
export type JobCancelled = z.infer<typeof JobCancelled>;
