import { z } from "zod";
import { ErrorCode } from "./errors.js";
import { CustomId, JobRequest, JobView } from "./jobs.js";

/**
 * A line of a batch file (POST /v1/batches, JSONL), in the OpenAI Batch API's shape:
 * `{"custom_id": "...", "method": "POST", "url": "/v1/jobs", "body": <a POST /v1/jobs body>}`.
 * `method` and `url` may be left out; when given they must name POST /v1/jobs. The body
 * may repeat the line's custom_id, never name another one. Unknown fields are refused.
 */
export const BatchLine = z.strictObject({
  custom_id: CustomId,
  method: z.literal("POST").optional(),
  url: z.literal("/v1/jobs").optional(),
  body: JobRequest,
});
export type BatchLine = z.infer<typeof BatchLine>;

export const BatchStatus = z.enum(["in_progress", "completed", "cancelling", "cancelled", "expired"]);
export type BatchStatus = z.infer<typeof BatchStatus>;

/** What a batch's lines came to so far. */
export const BatchCounts = z.object({
  /** Request lines read (blank lines are not requests). */
  total: z.number().int(),
  /** Lines that became jobs. */
  accepted: z.number().int(),
  /** Lines refused before they became jobs (malformed, invalid, over a limit), each with its error in the results. */
  refused: z.number().int(),
  completed: z.number().int(),
  failed: z.number().int(),
  cancelled: z.number().int(),
});
export type BatchCounts = z.infer<typeof BatchCounts>;

/** POST /v1/batches (202), GET and DELETE /v1/batches/{id}. */
export const BatchView = z.object({
  id: z.string(),
  object: z.literal("batch"),
  status: BatchStatus,
  counts: BatchCounts,
  createdAt: z.string(),
  /** After this the batch is `expired` if not complete: its jobs can no longer start. */
  completeBy: z.string(),
  /** The batch and its results are kept until then (BATCH_TTL_MS after creation), whatever the jobs' own retention. */
  expiresAt: z.string(),
});
export type BatchView = z.infer<typeof BatchView>;

export const BatchLineStatus = z.enum(["completed", "failed", "cancelled", "refused", "pending"]);
export type BatchLineStatus = z.infer<typeof BatchLineStatus>;

/** One line of GET /v1/batches/{id}/results (JSONL), in the order of the batch file's lines. */
export const BatchResultLine = z.object({
  custom_id: z.string().optional(),
  /** The line's number in the batch file (1-based, blank lines counted). */
  line: z.number().int(),
  /** The job the line became (none for a refused line). */
  id: z.string().optional(),
  status: BatchLineStatus,
  finishedAt: z.string().optional(),
  result: JobView.shape.result,
  error: z.object({ code: ErrorCode.or(z.string()), message: z.string() }).optional(),
});
export type BatchResultLine = z.infer<typeof BatchResultLine>;

export const BATCH_CONTENT_TYPES = ["application/jsonl", "application/x-ndjson"] as const;
