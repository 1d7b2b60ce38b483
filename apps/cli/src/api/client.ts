import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { BINARY_CONTENT_TYPE, INFERENCE_HEADER_LENGTH, type JobView } from "@citadel/contracts";
import { ApiError } from "./api-error.js";
import { ApiUnreachableError, fetchFailureReason } from "./unreachable-error.js";

/** POST /v1/jobs's answer: 202 `{id,status,model,version}`, or 200 the job's view when `?wait` saw it finish. */
export type Submitted = Pick<JobView, "id" | "status" | "model" | "version"> & Partial<JobView>;

/** Where the API is and the tenant key to use. */
export interface ApiTarget {
  url: string;
  key: string;
}

/** The state `citadel demo --serve` leaves for other tools, in the working directory. */
const DEMO_STATE = path.join(".citadel", "demo.json");

/**
 * The API address and key: flags first, then CITADEL_API_URL / CITADEL_API_KEY, then a
 * running `citadel demo --serve`'s .citadel/demo.json (so the demo fleet needs no setup).
 */
export function resolveTarget(flags: { api?: string; key?: string }, env: NodeJS.ProcessEnv = process.env): ApiTarget {
  let url = flags.api ?? env.CITADEL_API_URL;
  let key = flags.key ?? env.CITADEL_API_KEY;
  if ((!url || !key) && existsSync(DEMO_STATE)) {
    let demo: { apiUrl?: unknown; apiKey?: unknown } | null;
    try {
      demo = JSON.parse(readFileSync(DEMO_STATE, "utf8")) as typeof demo;
    } catch (err) {
      throw new Error(`${DEMO_STATE}: ${err instanceof Error ? err.message : "unreadable"}`, { cause: err });
    }
    if (!url && typeof demo?.apiUrl === "string") url = demo.apiUrl;
    if (!key && typeof demo?.apiKey === "string") key = demo.apiKey;
  }
  if (!url) throw new Error("no API address: pass --api <url> or set CITADEL_API_URL");
  if (!key) throw new Error("no API key: pass --key <key> or set CITADEL_API_KEY");
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`the API address '${url}' is not a URL (e.g. http://127.0.0.1:8080)`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:")
    throw new Error(`the API address '${url}' is not an http(s) URL (e.g. http://127.0.0.1:8080)`);
  return { url: url.replace(/\/+$/, ""), key };
}

/** The job routes of /v1 (docs/api.md), answering parsed JSON or throwing ApiError / ApiUnreachableError. */
export class ApiClient {
  constructor(private readonly target: ApiTarget) {}

  get url(): string {
    return this.target.url;
  }

  /** POST /v1/jobs with a JSON body (the request as given: the API is the judge of it). */
  submitJson(request: unknown, waitMs?: number): Promise<Submitted> {
    return this.call("POST", `/v1/jobs${waitQuery(waitMs)}`, {
      body: JSON.stringify(request),
      headers: { "content-type": "application/json" },
    }) as Promise<Submitted>;
  }

  /** POST /v1/jobs with a KServe v2 binary body (encodeBinaryBody's output). */
  submitBinary(body: { body: Buffer; headerLength: number }, waitMs?: number): Promise<Submitted> {
    return this.call("POST", `/v1/jobs${waitQuery(waitMs)}`, {
      body: body.body,
      headers: { "content-type": BINARY_CONTENT_TYPE, [INFERENCE_HEADER_LENGTH]: String(body.headerLength) },
    }) as Promise<Submitted>;
  }

  get(id: string, waitMs?: number): Promise<JobView> {
    return this.call("GET", `/v1/jobs/${encodeURIComponent(id)}${waitQuery(waitMs)}`) as Promise<JobView>;
  }

  cancel(id: string): Promise<{ id: string; status: string }> {
    return this.call("DELETE", `/v1/jobs/${encodeURIComponent(id)}`) as Promise<{ id: string; status: string }>;
  }

  private async call(
    method: string,
    route: string,
    init: { body?: string | Buffer; headers?: Record<string, string> } = {},
  ): Promise<unknown> {
    let res: Response;
    let text: string;
    try {
      res = await fetch(`${this.target.url}${route}`, {
        method,
        headers: { authorization: `Bearer ${this.target.key}`, accept: "application/json", ...init.headers },
        ...(init.body !== undefined ? { body: init.body } : {}),
      });
      text = await res.text();
    } catch (err) {
      throw new ApiUnreachableError(this.target.url, fetchFailureReason(err), { cause: err });
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const e = (json as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
      const retry = Number(res.headers.get("retry-after"));
      throw new ApiError(
        typeof e?.code === "string" ? e.code : `HTTP_${res.status}`,
        typeof e?.message === "string" ? e.message : text.slice(0, 200) || res.statusText,
        res.status,
        Number.isFinite(retry) && retry > 0 ? retry * 1000 : undefined,
      );
    }
    if (typeof json !== "object" || json === null)
      throw new ApiError("BAD_RESPONSE", `${method} ${route} answered something that is not JSON`, res.status);
    return json;
  }
}

const waitQuery = (ms: number | undefined) => (ms === undefined ? "" : `?wait=${Math.max(0, Math.ceil(ms))}`);
