import { z } from "zod";
import { ApiErrorBody } from "./errors.js";
import { JobAccepted, JobRequest } from "./jobs.js";

/**
 * POST /v1/jobs/bulk (JSON), as documented: every item is a job request. The route
 * takes any items and checks each one on its own (BulkEnvelope), so one bad item is
 * refused alone instead of failing the request.
 */
export const BulkRequest = z.strictObject({ jobs: z.array(JobRequest).min(1) });
export type BulkRequest = z.infer<typeof BulkRequest>;

/** What the bulk route validates before its handler checks each item. */
export const BulkEnvelope = z.strictObject({ jobs: z.array(z.unknown()).min(1) });

/** An item that became a job: its index in the request and the accepted job. */
export const BulkAcceptedItem = JobAccepted.extend({ index: z.number().int() });
export type BulkAcceptedItem = z.infer<typeof BulkAcceptedItem>;

/** An item refused alone: its index, the HTTP status a single submit would have had, and the error. */
export const BulkRefusedItem = ApiErrorBody.extend({ index: z.number().int(), status: z.number().int() });
export type BulkRefusedItem = z.infer<typeof BulkRefusedItem>;

/** POST /v1/jobs/bulk (202): one answer per item, in the request's order. */
export const BulkResponse = z.object({ jobs: z.array(z.union([BulkAcceptedItem, BulkRefusedItem])) });
export type BulkResponse = z.infer<typeof BulkResponse>;
