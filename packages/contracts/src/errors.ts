import { z } from "zod";

/**
 * Every failure Citadel reports, API and worker alike. Stable strings: clients and
 * dashboards key on them. Grouped by where they arise.
 */
export const ErrorCode = z.enum([
  // request shape and auth (API)
  "MALFORMED_JSON",
  "VALIDATION_FAILED",
  "UNAUTHORIZED",
  "FORBIDDEN",
  "MODEL_NOT_FOUND",
  "JOB_NOT_FOUND",
  /** No such batch, or another tenant's, or past its retention (BATCH_TTL_MS). */
  "BATCH_NOT_FOUND",
  "NOT_FOUND",
  "IDEMPOTENCY_CONFLICT",
  /** The job an Idempotency-Key named no longer exists (its result expired): it is never run again. */
  "IDEMPOTENCY_EXPIRED",
  "PAYLOAD_TOO_LARGE",
  "UNSUPPORTED_MEDIA_TYPE",
  /** A body sent with Content-Encoding gzip or deflate whose bytes do not decode. */
  "BODY_ENCODING_INVALID",
  // completion notifications (webhooks)
  /** A callback URL named per job or batch by a tenant not allowed to (or with webhooks off in this deployment). */
  "CALLBACK_NOT_ALLOWED",
  /** A callback URL whose target may not be called: not https, a private, loopback or link-local address, unresolvable. */
  "CALLBACK_URL_REFUSED",
  // binary bodies (KServe v2 binary tensor data extension)
  /** Inference-Header-Content-Length is missing, not a non-negative integer, or past the body's end. */
  "BINARY_HEADER_LENGTH_INVALID",
  /** An input in a binary body's header has no parameters.binary_data_size. */
  "BINARY_DATA_SIZE_MISSING",
  /** The binary_data_size values do not add up to the bytes after the header (too few, or bytes left over). */
  "BINARY_DATA_SIZE_MISMATCH",
  // tensors against the manifest (API and worker re-validation)
  "INPUT_MISSING",
  "INPUT_UNKNOWN",
  "OUTPUT_UNKNOWN",
  "TENSOR_DTYPE_MISMATCH",
  "TENSOR_RANK_MISMATCH",
  "TENSOR_SHAPE_MISMATCH",
  "TENSOR_DATA_LENGTH_MISMATCH",
  "TENSOR_ENCODING_INVALID",
  "TENSOR_NON_FINITE",
  "TENSOR_OUT_OF_RANGE",
  "BATCH_TOO_LARGE",
  "BATCH_MISMATCH",
  "TIMEOUT_TOO_LARGE",
  "TIMEOUT_TOO_SMALL",
  // abuse controls
  "RATE_LIMITED",
  "QUOTA_EXCEEDED",
  "QUEUE_FULL",
  "QUEUE_UNAVAILABLE",
  "OVERLOADED",
  /** A synchronous infer (POST /v2/.../infer) whose job was accepted but is not final within the wait: fetch it by id. */
  "RESULT_PENDING",
  // model supply chain (artifacts, keys)
  "MANIFEST_INVALID",
  "SIGNATURE_MISSING",
  "SIGNATURE_INVALID",
  "SIGNER_UNTRUSTED",
  "MANIFEST_MODEL_MISMATCH",
  "ARTIFACT_MISSING",
  "ARTIFACT_TRUNCATED",
  "ARTIFACT_HASH_MISMATCH",
  "KEY_UNWRAP_FAILED",
  "DECRYPTION_FAILED",
  "PLAINTEXT_HASH_MISMATCH",
  /** The decrypted model's own inputs/outputs disagree with its signed manifest. */
  "MODEL_IO_MISMATCH",
  "VAULT_UNAVAILABLE",
  "VAULT_DENIED",
  // model lifecycle (operators)
  "MODEL_RETIRED",
  "VERSION_IS_STABLE",
  // execution (worker)
  "JOB_INVALID",
  "DEADLINE_EXCEEDED",
  /** The job's workers stopped during its run more times than allowed (it may be what kills them). */
  "JOB_STALLED",
  "TIMEOUT",
  "CANCELLED",
  "MODEL_LOAD_FAILED",
  "PROVIDER_UNAVAILABLE",
  "RUNTIME_ERROR",
  /** The model failed on this job's input alone and ran a synthetic probe at once: the input is at fault, not retried. */
  "INPUT_FAULT",
  "CIRCUIT_OPEN",
  "RESULT_TOO_LARGE",
  "INTERNAL",
]);
export type ErrorCode = z.infer<typeof ErrorCode>;

/** The HTTP status each code maps to when it reaches a client synchronously. */
export function httpStatusFor(code: ErrorCode): number {
  switch (code) {
    case "MALFORMED_JSON":
    case "VALIDATION_FAILED":
    case "BODY_ENCODING_INVALID":
    case "BINARY_HEADER_LENGTH_INVALID":
    case "BINARY_DATA_SIZE_MISSING":
    case "BINARY_DATA_SIZE_MISMATCH":
    case "CALLBACK_URL_REFUSED":
      return 400;
    case "UNAUTHORIZED":
      return 401;
    case "FORBIDDEN":
    case "CALLBACK_NOT_ALLOWED":
      return 403;
    case "MODEL_NOT_FOUND":
    case "JOB_NOT_FOUND":
    case "BATCH_NOT_FOUND":
    case "NOT_FOUND":
      return 404;
    case "IDEMPOTENCY_CONFLICT":
    case "IDEMPOTENCY_EXPIRED":
    case "MODEL_RETIRED":
    case "VERSION_IS_STABLE":
      return 409;
    case "PAYLOAD_TOO_LARGE":
      return 413;
    case "UNSUPPORTED_MEDIA_TYPE":
      return 415;
    case "INPUT_MISSING":
    case "INPUT_UNKNOWN":
    case "OUTPUT_UNKNOWN":
    case "TENSOR_DTYPE_MISMATCH":
    case "TENSOR_RANK_MISMATCH":
    case "TENSOR_SHAPE_MISMATCH":
    case "TENSOR_DATA_LENGTH_MISMATCH":
    case "TENSOR_ENCODING_INVALID":
    case "TENSOR_NON_FINITE":
    case "TENSOR_OUT_OF_RANGE":
    case "BATCH_TOO_LARGE":
    case "BATCH_MISMATCH":
    case "TIMEOUT_TOO_LARGE":
    case "TIMEOUT_TOO_SMALL":
    case "JOB_INVALID":
    case "INPUT_FAULT":
      return 422;
    case "RATE_LIMITED":
    case "QUOTA_EXCEEDED":
      return 429;
    case "QUEUE_FULL":
    case "QUEUE_UNAVAILABLE":
    case "OVERLOADED":
    case "CIRCUIT_OPEN":
    case "VAULT_UNAVAILABLE":
    // A model that fails its integrity checks cannot be served: the service, not
    // the request, is at fault, and retrying later (after a re-publish) may work.
    case "MANIFEST_INVALID":
    case "SIGNATURE_MISSING":
    case "SIGNATURE_INVALID":
    case "SIGNER_UNTRUSTED":
    case "MANIFEST_MODEL_MISMATCH":
    case "ARTIFACT_MISSING":
    case "ARTIFACT_TRUNCATED":
    case "ARTIFACT_HASH_MISMATCH":
    case "KEY_UNWRAP_FAILED":
    case "DECRYPTION_FAILED":
    case "PLAINTEXT_HASH_MISMATCH":
    case "MODEL_IO_MISMATCH":
    case "VAULT_DENIED":
      return 503;
    case "RESULT_PENDING":
      return 504;
    case "DEADLINE_EXCEEDED":
    case "JOB_STALLED":
    case "TIMEOUT":
    case "CANCELLED":
    case "MODEL_LOAD_FAILED":
    case "PROVIDER_UNAVAILABLE":
    case "RUNTIME_ERROR":
    case "RESULT_TOO_LARGE":
    case "INTERNAL":
      return 500;
    default:
      return assertExhaustive(code);
  }
}

/**
 * What a tenant is told about a failure. Codes about the tenant's own request keep
 * their message (it describes what they sent); failures inside the fleet get a fixed
 * message per code, because their details (onnxruntime's text with node names and
 * shapes, provider errors with paths, integrity specifics) tell an outsider about the
 * model and the hosts. The details belong in the logs.
 */
export function publicError(e: Pick<CitadelError, "code" | "message">): { code: ErrorCode; message: string } {
  const fixed = INTERNAL_MESSAGES[e.code];
  return { code: e.code, message: fixed ?? e.message };
}

const INTEGRITY = "the model failed its integrity checks and cannot be served";
const INTERNAL_MESSAGES: Partial<Record<ErrorCode, string>> = {
  RUNTIME_ERROR: "inference failed",
  INPUT_FAULT: "inference failed on this job's input (the model runs others)",
  MODEL_LOAD_FAILED: "the model could not be loaded",
  PROVIDER_UNAVAILABLE: "no execution provider could load the model",
  MODEL_IO_MISMATCH: INTEGRITY,
  MANIFEST_INVALID: INTEGRITY,
  SIGNATURE_MISSING: INTEGRITY,
  SIGNATURE_INVALID: INTEGRITY,
  SIGNER_UNTRUSTED: INTEGRITY,
  MANIFEST_MODEL_MISMATCH: INTEGRITY,
  ARTIFACT_MISSING: INTEGRITY,
  ARTIFACT_TRUNCATED: INTEGRITY,
  ARTIFACT_HASH_MISMATCH: INTEGRITY,
  KEY_UNWRAP_FAILED: INTEGRITY,
  DECRYPTION_FAILED: INTEGRITY,
  PLAINTEXT_HASH_MISMATCH: INTEGRITY,
  VAULT_UNAVAILABLE: "the key service is unavailable; the job will be retried",
  VAULT_DENIED: "the key service refused access to the model key",
  CIRCUIT_OPEN: "the model is paused after repeated failures",
  INTERNAL: "internal error",
};

/** Codes that a retry cannot fix: the worker fails these with UnrecoverableError. */
export function isRetryable(code: ErrorCode): boolean {
  return code === "RUNTIME_ERROR" || code === "VAULT_UNAVAILABLE" || code === "MODEL_LOAD_FAILED";
}

export function assertExhaustive(value: never): never {
  throw new Error(`unhandled case: ${String(value)}`);
}

/**
 * An error with a stable code and a message safe to show a client. `details` must
 * never carry secrets or tensor data; `cause` stays server-side.
 */
export class CitadelError extends Error {
  override readonly name = "CitadelError";
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  toJSON(): ApiErrorBody {
    return { error: { code: this.code, message: this.message, ...(this.details ? { details: this.details } : {}) } };
  }
}

export const ApiErrorBody = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
    details: z.unknown().optional(),
  }),
});
export type ApiErrorBody = z.infer<typeof ApiErrorBody>;

/** Normalises anything thrown into an Error (graphile-worker's coerceError). */
export function coerceError(err: unknown): Error {
  if (err instanceof Error) return err;
  return new Error(typeof err === "string" ? err : `non-error thrown: ${typeof err}`);
}

/** The code of the CitadelError `fn` throws, or "none" when it returns (any other error propagates). */
export function thrownCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof CitadelError) return e.code;
    throw e;
  }
  return "none";
}
