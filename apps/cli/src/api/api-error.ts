/**
 * The API refused a request: its error code and message, and the HTTP status. Printed
 * as `CODE: message (HTTP status)`.
 */
export class ApiError extends Error {
  override readonly name = "ApiError";
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
    /** From a Retry-After header, when the API says when to try again. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }

  get line(): string {
    return `${this.code}: ${this.message} (HTTP ${this.status})`;
  }
}
