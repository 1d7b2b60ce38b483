import type {
  BatchResultLine,
  BatchView,
  BulkResponse,
  JobAccepted,
  JobCancelled,
  JobView,
  ModelInfo,
  ModelList,
} from "@citadel/contracts";
import { CitadelApiError } from "./errors.js";
import { type Answer, parseJson, type RetryKind, type RetryOptions, sleep, Transport } from "./http.js";
import { jsonlStream, readLines } from "./jsonl.js";
import type { BatchInputLine, BatchResult, BulkItem, Job, JobInput, SubmitAndWaitResult } from "./types.js";
import { binaryable, binaryJobs, decodeResult, fromBinaryView, fromView, jsonJob } from "./wire.js";

export interface CitadelClientOptions {
  /** The API's address, e.g. http://127.0.0.1:8080. */
  baseUrl: string;
  /** A tenant key (sent as `Authorization: Bearer <key>`). */
  apiKey: string;
  /** A fetch of your own (default: the global one). */
  fetch?: typeof fetch;
  /** How long a request may take, on top of any wait it asks the API for. Default 60 s; 0: no limit. */
  timeoutMs?: number;
  /**
   * Retries of 429 and 503 after the Retry-After the API gave (default 3 tries, waits up
   * to 30 s); `false`: none. A submit is retried with its Idempotency-Key; without one,
   * only after refusals that say nothing was queued.
   */
  retry?: RetryOptions | false;
}

export interface SubmitOptions {
  /** Makes the submit safe to repeat: the API answers a repeat with the job the key created. */
  idempotencyKey?: string;
  /** Send tensors as a KServe v2 binary body and ask for results as bytes (default true). */
  binary?: boolean;
  signal?: AbortSignal;
}

export interface WaitOptions {
  /** Ask for the result as bytes (default true): no base64 on the way back. */
  binary?: boolean;
  signal?: AbortSignal;
}

/** Both answers a job read may take; JSON preferred only when binary is off. */
const ACCEPT_BINARY = "application/octet-stream, application/json;q=0.5";
const ACCEPT_JSON = "application/json";

/**
 * A client of Citadel's producer API (/v1): submit jobs (one, many, or a batch file),
 * wait for them, read and cancel them. Tensors go as TypedArrays (`tensor()`), sent as
 * KServe v2 binary bodies by default; results come back with their outputs as
 * TypedArrays. Refusals throw CitadelApiError; no answer throws CitadelConnectionError.
 */
export class CitadelClient {
  private readonly http: Transport;

  constructor(options: CitadelClientOptions) {
    this.http = new Transport(options);
  }

  get baseUrl(): string {
    return this.http.baseUrl;
  }

  /** POST /v1/jobs: queues a job and answers at once with its id. */
  async submit(job: JobInput, opts: SubmitOptions = {}): Promise<JobAccepted> {
    const a = await this.postJob(job, opts);
    return this.json<JobAccepted>(a, "POST /v1/jobs");
  }

  /**
   * POST /v1/jobs?wait=ms: queues a job and waits up to `waitMs` (at most the API's
   * MAX_WAIT_MS, 30 s by default) for it to be final. Not final in time: the accepted
   * job, for waitForJob.
   */
  async submitAndWait(job: JobInput, opts: SubmitOptions & { waitMs: number }): Promise<SubmitAndWaitResult> {
    const a = await this.postJob(job, opts, opts.waitMs);
    if (a.status === 200) return { final: true, job: this.view(a, "POST /v1/jobs") };
    return { final: false, accepted: this.json<JobAccepted>(a, "POST /v1/jobs") };
  }

  /** GET /v1/jobs/{id}: the job's view; with `waitMs`, once final or when the wait runs out. */
  async getJob(id: string, opts: WaitOptions & { waitMs?: number } = {}): Promise<Job> {
    const a = await this.http.exchange({
      method: "GET",
      path: `/v1/jobs/${encodeURIComponent(id)}`,
      query: { wait: opts.waitMs === undefined ? undefined : Math.max(0, Math.ceil(opts.waitMs)) },
      headers: { accept: opts.binary === false ? ACCEPT_JSON : ACCEPT_BINARY },
      ...(opts.waitMs !== undefined ? { waitMs: opts.waitMs } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
      retry: "idempotent",
    });
    return this.view(a, "GET /v1/jobs/{id}");
  }

  /**
   * Long-polls GET /v1/jobs/{id}?wait= (`pollMs` at a time, 10 s by default: under the
   * API's MAX_WAIT_MS) until the job is final or `timeoutMs` passes (no bound when not
   * given). Resolves with the final view, or the last one when the time ran out: check
   * `status` (completed, failed, cancelled; queued or active when it ran out).
   */
  async waitForJob(id: string, opts: WaitOptions & { timeoutMs?: number; pollMs?: number } = {}): Promise<Job> {
    const deadline = opts.timeoutMs === undefined ? Number.POSITIVE_INFINITY : Date.now() + opts.timeoutMs;
    const pollMs = opts.pollMs ?? 10_000;
    let pause = 100;
    for (;;) {
      const started = Date.now();
      const waitMs = Math.max(0, Math.min(pollMs, deadline - started));
      const job = await this.getJob(id, { ...opts, waitMs });
      if (isFinal(job) || Date.now() >= deadline) return job;
      // An answer well before the wait it asked for (the API let go early): back off before asking again.
      if (Date.now() - started < waitMs / 2) {
        await sleep(Math.max(0, Math.min(pause, deadline - Date.now())), opts.signal);
        pause = Math.min(pause * 2, 2_000);
      }
    }
  }

  /** DELETE /v1/jobs/{id}: `cancelled`, `cancelling` (running), or the final status it already had. */
  async cancel(id: string, opts: { signal?: AbortSignal } = {}): Promise<JobCancelled> {
    const a = await this.http.exchange({
      method: "DELETE",
      path: `/v1/jobs/${encodeURIComponent(id)}`,
      headers: { accept: ACCEPT_JSON },
      ...(opts.signal ? { signal: opts.signal } : {}),
      retry: "idempotent",
    });
    return this.json<JobCancelled>(a, "DELETE /v1/jobs/{id}");
  }

  /**
   * POST /v1/jobs/bulk: many jobs in one request (at most the API's BULK_MAX_JOBS), each
   * answered on its own, in order. A binary body when every item's inputs are tensors:
   * its framing is checked whole, so an item whose header does not match its schema
   * refuses the request; items the model refuses are refused alone either way.
   */
  async submitBulk(jobs: readonly JobInput[], opts: SubmitOptions = {}): Promise<BulkItem[]> {
    const binary = opts.binary !== false && jobs.every(binaryable);
    const body = binary
      ? binaryJobs(jobs, true)
      : { body: JSON.stringify({ jobs: jobs.map(jsonJob) }), headers: { "content-type": "application/json" } };
    const a = await this.http.exchange({
      method: "POST",
      path: "/v1/jobs/bulk",
      headers: { ...body.headers, accept: ACCEPT_JSON, ...idempotency(opts.idempotencyKey) },
      body: body.body,
      ...(opts.signal ? { signal: opts.signal } : {}),
      retry: retryOfSubmit(opts.idempotencyKey),
    });
    return this.json<BulkResponse>(a, "POST /v1/jobs/bulk").jobs.map((item) =>
      "error" in item
        ? {
            index: item.index,
            ok: false as const,
            error: new CitadelApiError(item.status, item.error.code, item.error.message, {
              ...(item.error.details !== undefined ? { details: item.error.details } : {}),
            }),
          }
        : {
            index: item.index,
            ok: true as const,
            job: { id: item.id, status: item.status, model: item.model, version: item.version },
          },
    );
  }

  /**
   * POST /v1/batches: a batch file of jobs, one JSONL line each. A string is sent as the
   * file; an array is joined; any other (async) iterable is streamed as it is read (Node;
   * browsers stream request bodies over HTTP/2 only). Answers once the API has read the
   * whole file: each line accepted as a job or refused alone (see batchResults).
   */
  async createBatch(
    lines: string | readonly BatchInputLine[] | Iterable<BatchInputLine> | AsyncIterable<BatchInputLine>,
    opts: { signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<BatchView> {
    const line = (l: BatchInputLine) => ({ custom_id: l.custom_id, body: jsonJob(l.body) });
    const body =
      typeof lines === "string"
        ? lines
        : Array.isArray(lines)
          ? (lines as readonly BatchInputLine[]).map((l) => `${JSON.stringify(line(l))}\n`).join("")
          : jsonlStream(lines as Iterable<BatchInputLine> | AsyncIterable<BatchInputLine>, line);
    const a = await this.http.exchange({
      method: "POST",
      path: "/v1/batches",
      headers: { "content-type": "application/jsonl", accept: ACCEPT_JSON },
      body,
      // The upload is as long as the file: no limit unless asked for.
      timeoutMs: opts.timeoutMs ?? 0,
      ...(opts.signal ? { signal: opts.signal } : {}),
      retry: "never",
    });
    return this.json<BatchView>(a, "POST /v1/batches");
  }

  /** GET /v1/batches/{id}: status and counts. */
  async getBatch(id: string, opts: { signal?: AbortSignal } = {}): Promise<BatchView> {
    return this.batchCall("GET", `/v1/batches/${encodeURIComponent(id)}`, opts.signal);
  }

  /**
   * Polls GET /v1/batches/{id} every `pollMs` (1 s by default) until the batch is over
   * (completed, cancelled or expired) or `timeoutMs` passes (no bound when not given).
   * Resolves with the last view: check `status`. (The API has no long-poll for batches.)
   */
  async waitForBatch(
    id: string,
    opts: { signal?: AbortSignal; timeoutMs?: number; pollMs?: number } = {},
  ): Promise<BatchView> {
    const deadline = opts.timeoutMs === undefined ? Number.POSITIVE_INFINITY : Date.now() + opts.timeoutMs;
    for (;;) {
      const batch = await this.getBatch(id, opts);
      if (isBatchOver(batch) || Date.now() >= deadline) return batch;
      await sleep(Math.max(0, Math.min(opts.pollMs ?? 1_000, deadline - Date.now())), opts.signal);
    }
  }

  /** DELETE /v1/batches/{id}: queued jobs are removed, running ones cancelled. */
  async cancelBatch(id: string, opts: { signal?: AbortSignal } = {}): Promise<BatchView> {
    return this.batchCall("DELETE", `/v1/batches/${encodeURIComponent(id)}`, opts.signal);
  }

  /**
   * GET /v1/batches/{id}/results, line by line as it streams: one per request line of
   * the file, in its order, results' outputs decoded. Breaking off the loop ends the
   * download.
   */
  async *batchResults(id: string, opts: { signal?: AbortSignal } = {}): AsyncGenerator<BatchResult> {
    const res = await this.http.open({
      method: "GET",
      path: `/v1/batches/${encodeURIComponent(id)}/results`,
      headers: { accept: "application/jsonl" },
      ...(opts.signal ? { signal: opts.signal } : {}),
      retry: "idempotent",
    });
    if (!res.body) throw new CitadelApiError(res.status, "BAD_RESPONSE", "the results answer has no body");
    for await (const text of readLines(res.body)) {
      const raw = parseJson(text) as BatchResultLine | undefined;
      if (typeof raw !== "object" || raw === null) {
        throw new CitadelApiError(res.status, "BAD_RESPONSE", "a results line is not JSON");
      }
      const { result, ...rest } = raw;
      const decoded = decodeResult(result);
      yield decoded ? { ...rest, result: decoded } : rest;
    }
  }

  /** GET /v1/models: the models this tenant may use, with their inputs, outputs and limits. */
  async listModels(opts: { signal?: AbortSignal } = {}): Promise<ModelInfo[]> {
    const a = await this.http.exchange({
      method: "GET",
      path: "/v1/models",
      headers: { accept: ACCEPT_JSON },
      ...(opts.signal ? { signal: opts.signal } : {}),
      retry: "idempotent",
    });
    return this.json<ModelList>(a, "GET /v1/models").models;
  }

  private postJob(job: JobInput, opts: SubmitOptions, waitMs?: number): Promise<Answer> {
    const binary = opts.binary !== false;
    const body =
      binary && binaryable(job)
        ? binaryJobs([job], false)
        : { body: JSON.stringify(jsonJob(job)), headers: { "content-type": "application/json" } };
    return this.http.exchange({
      method: "POST",
      path: "/v1/jobs",
      query: { wait: waitMs === undefined ? undefined : Math.max(0, Math.ceil(waitMs)) },
      headers: { ...body.headers, accept: binary ? ACCEPT_BINARY : ACCEPT_JSON, ...idempotency(opts.idempotencyKey) },
      body: body.body,
      ...(waitMs !== undefined ? { waitMs } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
      retry: retryOfSubmit(opts.idempotencyKey),
    });
  }

  private async batchCall(method: "GET" | "DELETE", path: string, signal?: AbortSignal): Promise<BatchView> {
    const a = await this.http.exchange({
      method,
      path,
      headers: { accept: ACCEPT_JSON },
      ...(signal ? { signal } : {}),
      retry: "idempotent",
    });
    return this.json<BatchView>(a, `${method} /v1/batches/{id}`);
  }

  /** A job view, from a binary answer or a JSON one. */
  private view(a: Answer, route: string): Job {
    if (a.headers.get("content-type")?.startsWith("application/octet-stream")) {
      return fromBinaryView(a.headers.get("inference-header-content-length"), a.body);
    }
    return fromView(this.json<JobView>(a, route));
  }

  /** A JSON answer's body (its shape is the route's, as documented in docs/openapi.json). */
  private json<T>(a: Answer, route: string): T {
    const value = parseJson(new TextDecoder().decode(a.body));
    if (typeof value !== "object" || value === null) {
      throw new CitadelApiError(a.status, "BAD_RESPONSE", `${route} answered something that is not a JSON object`);
    }
    return value as T;
  }
}

/** Whether a batch has nothing left to run: completed, cancelled or expired. */
export function isBatchOver(batch: Pick<BatchView, "status">): boolean {
  return batch.status !== "in_progress" && batch.status !== "cancelling";
}

export function isFinal(job: Pick<Job, "status">): boolean {
  return job.status === "completed" || job.status === "failed" || job.status === "cancelled";
}

const idempotency = (key: string | undefined): Record<string, string> =>
  key === undefined ? {} : { "idempotency-key": key };

/** A submit with a key is retried like a read (the key finds the job again); one without, only when nothing was queued. */
const retryOfSubmit = (key: string | undefined): RetryKind => (key === undefined ? "unqueued" : "idempotent");
