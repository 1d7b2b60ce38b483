export type {
  BatchCounts,
  BatchResultLine,
  BatchStatus,
  BatchView,
  DType,
  JobAccepted,
  JobCancelled,
  JobStatus,
  JobView,
  ModelInfo,
  ModelVersionInfo,
  Priority,
  TensorPayload,
} from "@citadel/contracts";
export {
  CitadelClient,
  type CitadelClientOptions,
  isBatchOver,
  isFinal,
  type SubmitOptions,
  type WaitOptions,
} from "./client.js";
export { CitadelApiError, CitadelConnectionError } from "./errors.js";
export type { RetryOptions } from "./http.js";
export { fromHalf, type HalfDType, type Tensor, type TypedArray, tensor, toHalf } from "./tensor.js";
export type { BatchInputLine, BatchResult, BulkItem, Job, JobInput, JobResult, SubmitAndWaitResult } from "./types.js";
export {
  type VerifyOptions,
  verifyWebhook,
  type WebhookFailure,
  type WebhookHeaders,
  WebhookVerificationError,
} from "./webhook.js";
export { toView } from "./wire.js";
