import { z } from "zod";
import { BatchView } from "./batches.js";
import { JobView } from "./jobs.js";

/** What a completion notification announces: a job (not in a batch) or a batch that became final. */
export const WebhookEventType = z.enum([
  "job.completed",
  "job.failed",
  "job.cancelled",
  "batch.completed",
  "batch.cancelled",
]);
export type WebhookEventType = z.infer<typeof WebhookEventType>;

/**
 * A job's notification carries its view without the result: outputs can be large, a
 * receiver holds an API key to fetch them (GET /v1/jobs/{id}), and a leaked or
 * mistyped callback URL then learns that a job ended, not what it computed. The view
 * is read when the notification is queued for delivery; a job already gone by then
 * (its retention over) is described by its id, model, status and finish time alone.
 */
export const WebhookJobData = JobView.omit({ result: true })
  .partial({ version: true, createdAt: true })
  .extend({ object: z.literal("job") });
export type WebhookJobData = z.infer<typeof WebhookJobData>;

/**
 * The body of a completion notification, in the Standard Webhooks shape
 * (https://www.standardwebhooks.com/): `type`, `timestamp` (ISO 8601, when the event
 * happened) and `data`. Sent as JSON with the headers webhook-id, webhook-timestamp and
 * webhook-signature (`v1,<base64 HMAC-SHA256>` under the tenant's `whsec_` secret).
 */
export const WebhookEvent = z.object({
  type: WebhookEventType,
  timestamp: z.string(),
  data: z.union([WebhookJobData, BatchView]),
});
export type WebhookEvent = z.infer<typeof WebhookEvent>;
