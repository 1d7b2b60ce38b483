/**
 * The API answered with a refusal (an HTTP status of 400 or more), or with something
 * that is not the answer its route documents (code BAD_RESPONSE). `code` is the API's
 * stable error code (packages/contracts/src/errors.ts), `HTTP_<status>` when the body
 * named none.
 */
export class CitadelApiError extends Error {
  override readonly name = "CitadelApiError";
  readonly details: unknown;
  /** From Retry-After: how long the API asks to wait before trying again. */
  readonly retryAfterMs: number | undefined;

  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    extra: { details?: unknown; retryAfterMs?: number } = {},
  ) {
    super(message);
    this.details = extra.details;
    this.retryAfterMs = extra.retryAfterMs;
  }
}

/** No answer came: the address did not answer, the connection broke, or the request timed out. */
export class CitadelConnectionError extends Error {
  override readonly name = "CitadelConnectionError";
  constructor(
    readonly url: string,
    readonly reason: string,
    readonly timedOut: boolean,
    options?: { cause?: unknown },
  ) {
    super(`cannot reach the API at ${url}: ${reason}`, options);
  }
}

const REASONS: Readonly<Record<string, string>> = {
  ECONNREFUSED: "connection refused",
  ENOTFOUND: "host not found",
  EAI_AGAIN: "host name lookup failed",
  ECONNRESET: "connection reset",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  ETIMEDOUT: "connection timed out",
  UND_ERR_CONNECT_TIMEOUT: "connection timed out",
  UND_ERR_SOCKET: "connection closed",
  CERT_HAS_EXPIRED: "TLS certificate expired",
  DEPTH_ZERO_SELF_SIGNED_CERT: "self-signed TLS certificate",
};

/**
 * Why fetch failed, in words: Node's fetch throws `TypeError("fetch failed")` whose
 * cause carries the system error (an AggregateError when every address of a host
 * refused); browsers give only their TypeError's message.
 */
export function fetchFailureReason(err: unknown): string {
  let cause: unknown = err instanceof Error && err.cause !== undefined ? err.cause : err;
  if (cause instanceof AggregateError && cause.errors.length > 0 && !(cause as { code?: unknown }).code)
    cause = cause.errors[0];
  const code = (cause as { code?: unknown } | undefined)?.code;
  if (typeof code === "string") return REASONS[code] ?? code;
  return cause instanceof Error ? cause.message : "the request failed";
}
