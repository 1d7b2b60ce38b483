import { CitadelApiError, CitadelConnectionError, fetchFailureReason } from "./errors.js";

/**
 * One HTTP exchange with the API, with its auth, its time limit, refusals turned into
 * CitadelApiError and no answer into CitadelConnectionError, and bounded retries of
 * 429/503 after the Retry-After the API gave.
 */

export interface RetryOptions {
  /** Tries in all, the first included (1: no retry). Default 3. */
  attempts?: number;
  /** A Retry-After longer than this is not waited for: the error is thrown. Default 30 s. */
  maxDelayMs?: number;
}

export interface TransportOptions {
  baseUrl: string;
  apiKey: string;
  fetch?: typeof fetch;
  /** How long a request may take, on top of any wait it asks the API for. Default 60 s; 0: no limit. */
  timeoutMs?: number;
  retry?: RetryOptions | false;
}

/**
 * Which refusals a request may be retried after:
 * - `idempotent`: any 429 or 503 (reads, cancels, and submits that carry an Idempotency-Key);
 * - `unqueued`: only those that say nothing was queued (429; 503 QUEUE_FULL or OVERLOADED);
 *   a 503 such as QUEUE_UNAVAILABLE may hide an accepted job, which only a key finds again;
 * - `never`: a body that cannot be sent twice (a streamed batch file).
 */
export type RetryKind = "idempotent" | "unqueued" | "never";

export interface Call {
  method: "GET" | "POST" | "DELETE";
  path: string;
  query?: Record<string, string | number | undefined>;
  headers?: Record<string, string>;
  body?: string | Uint8Array | ReadableStream<Uint8Array>;
  /** The long poll the request asks for (?wait=): its time limit grows by as much. */
  waitMs?: number;
  /** This request's own limit (undefined: the client's; 0: none). */
  timeoutMs?: number;
  retry: RetryKind;
  signal?: AbortSignal;
}

/** A read answer: status, headers and the whole body. */
export interface Answer {
  status: number;
  headers: Headers;
  body: Uint8Array;
}

const NOT_QUEUED_503 = new Set(["QUEUE_FULL", "OVERLOADED"]);

export class Transport {
  readonly baseUrl: string;
  private readonly fetch: typeof fetch;
  private readonly timeoutMs: number;
  private readonly attempts: number;
  private readonly maxDelayMs: number;

  constructor(private readonly o: TransportOptions) {
    this.baseUrl = o.baseUrl.replace(/\/+$/, "");
    this.fetch = o.fetch ?? globalThis.fetch.bind(globalThis);
    this.timeoutMs = o.timeoutMs ?? 60_000;
    this.attempts = o.retry === false ? 1 : Math.max(1, o.retry?.attempts ?? 3);
    this.maxDelayMs = o.retry === false ? 0 : (o.retry?.maxDelayMs ?? 30_000);
  }

  /** The request's answer, read whole within its time limit; a refusal throws. */
  async exchange(call: Call): Promise<Answer> {
    return this.withRetries(call, async (res, done) => {
      try {
        const body = new Uint8Array(await res.arrayBuffer());
        return { status: res.status, headers: res.headers, body };
      } catch (err) {
        throw this.noAnswer(err, done.timedOut(), call);
      } finally {
        done.clear();
      }
    });
  }

  /** The request's answer with its body unread (a stream); the time limit ends when the headers arrive. */
  async open(call: Call): Promise<Response> {
    return this.withRetries(call, async (res, done) => {
      // The caller's signal still ends the stream; only the time limit stops here.
      done.clearTimer();
      return res;
    });
  }

  private async withRetries<T>(call: Call, take: (res: Response, done: Deadline) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const deadline = this.deadline(call);
      let res: Response;
      try {
        res = await this.fetch(this.url(call), {
          method: call.method,
          headers: { authorization: `Bearer ${this.o.apiKey}`, ...call.headers },
          ...(call.body !== undefined ? { body: call.body } : {}),
          // A streamed body (Node's fetch asks for half duplex; browsers need HTTP/2 for it).
          ...(call.body instanceof ReadableStream ? { duplex: "half" } : {}),
          signal: deadline.signal,
        } as RequestInit);
      } catch (err) {
        deadline.clear();
        throw this.noAnswer(err, deadline.timedOut(), call);
      }
      if (res.status < 400) return take(res, deadline);
      const error = await this.refusal(res, call, deadline);
      const wait = error.retryAfterMs;
      const retryable =
        call.retry === "idempotent"
          ? error.status === 429 || error.status === 503
          : call.retry === "unqueued" &&
            (error.status === 429 || (error.status === 503 && NOT_QUEUED_503.has(error.code)));
      if (!retryable || wait === undefined || wait > this.maxDelayMs || attempt >= this.attempts) throw error;
      await sleep(wait, call.signal);
    }
  }

  private url(call: Call): string {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(call.query ?? {})) if (v !== undefined) q.set(k, String(v));
    const qs = q.toString();
    return `${this.baseUrl}${call.path}${qs ? `?${qs}` : ""}`;
  }

  /** A refusal's body and headers as a CitadelApiError (its body read within the time limit). */
  private async refusal(res: Response, call: Call, deadline: Deadline): Promise<CitadelApiError> {
    let text: string;
    try {
      text = await res.text();
    } catch (err) {
      throw this.noAnswer(err, deadline.timedOut(), call);
    } finally {
      deadline.clear();
    }
    const e = parseJson(text) as { error?: { code?: unknown; message?: unknown; details?: unknown } } | undefined;
    const retryAfterMs = retryAfter(res.headers.get("retry-after"));
    return new CitadelApiError(
      res.status,
      typeof e?.error?.code === "string" ? e.error.code : `HTTP_${res.status}`,
      typeof e?.error?.message === "string" ? e.error.message : text.slice(0, 200) || res.statusText,
      {
        ...(e?.error?.details !== undefined ? { details: e.error.details } : {}),
        ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
      },
    );
  }

  /** No answer: the caller's own abort is passed on as it is; anything else is a CitadelConnectionError. */
  private noAnswer(err: unknown, timedOut: boolean, call: Call): unknown {
    if (call.signal?.aborted) return call.signal.reason;
    const limit = this.limitOf(call);
    const reason = timedOut ? `no answer within ${limit} ms` : fetchFailureReason(err);
    return new CitadelConnectionError(this.baseUrl, reason, timedOut, { cause: err });
  }

  private limitOf(call: Call): number {
    const base = call.timeoutMs ?? this.timeoutMs;
    return base === 0 ? 0 : base + (call.waitMs ?? 0);
  }

  /** The request's time limit and the caller's signal, as one signal. */
  private deadline(call: Call): Deadline {
    const controller = new AbortController();
    const limit = this.limitOf(call);
    let timedOut = false;
    const timer =
      limit > 0
        ? setTimeout(() => {
            timedOut = true;
            controller.abort(new Error(`timed out after ${limit} ms`));
          }, limit)
        : undefined;
    const onAbort = () => controller.abort(call.signal?.reason);
    if (call.signal?.aborted) onAbort();
    else call.signal?.addEventListener("abort", onAbort, { once: true });
    return {
      signal: controller.signal,
      timedOut: () => timedOut,
      clearTimer: () => clearTimeout(timer),
      clear: () => {
        clearTimeout(timer);
        call.signal?.removeEventListener("abort", onAbort);
      },
    };
  }
}

interface Deadline {
  signal: AbortSignal;
  timedOut(): boolean;
  clearTimer(): void;
  /** Ends the time limit and lets go of the caller's signal. */
  clear(): void;
}

/** Retry-After as milliseconds: delay-seconds, or an HTTP date (RFC 9110 §10.2.3). */
export function retryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Waits `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
