import type { BatchResultLine, JobAccepted, JobMetadata, JobView, Priority, TensorPayload } from "@citadel/contracts";
import type { CitadelApiError } from "./errors.js";
import type { Tensor } from "./tensor.js";

/**
 * A job to submit: POST /v1/jobs's body, with inputs as TypedArray tensors (`tensor()`)
 * or in the API's JSON form (`{dtype, shape, data}`, data base64 or a number array).
 * Sent as a binary body when every input is a tensor, else as JSON.
 */
export interface JobInput {
  model: string;
  version?: string;
  inputs: Record<string, Tensor | TensorPayload>;
  outputs?: string[];
  timeoutMs?: number;
  priority?: Priority;
  custom_id?: string;
  metadata?: JobMetadata;
}

/** A result with its outputs decoded into TypedArrays. */
export type JobResult = Omit<NonNullable<JobView["result"]>, "outputs"> & { outputs: Record<string, Tensor> };

/** A job's view (GET /v1/jobs/{id}), its result's outputs decoded. */
export type Job = Omit<JobView, "result"> & { result?: JobResult };

/** submitAndWait: the final job when it finished within the wait, else the accepted one (poll it with waitForJob). */
export type SubmitAndWaitResult = { final: true; job: Job } | { final: false; accepted: JobAccepted };

/** One item of a bulk submit, in the request's order: accepted, or refused alone with its error. */
export type BulkItem =
  | { index: number; ok: true; job: JobAccepted }
  | { index: number; ok: false; error: CitadelApiError };

/** A line of a batch file: the client's name for it and a job (its tensors go as base64 JSON). */
export interface BatchInputLine {
  custom_id: string;
  body: JobInput;
}

/** A line of a batch's results, its result's outputs decoded. */
export type BatchResult = Omit<BatchResultLine, "result"> & { result?: JobResult };
