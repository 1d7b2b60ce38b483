/**
 * The last pass over the generated OpenAPI document, for what the routes' zod schemas
 * cannot say: response headers (Retry-After on 429/503, the binary header length on
 * binary answers), a description for every response, and components without the
 * library's leftovers (schemas nothing refers to; `<id>Input` where only the request
 * form of a schema is used), and the completion notifications as operation callbacks.
 * Pure: the same document in gives the same document out.
 */

export interface OpenApiDocument {
  openapi: string;
  paths?: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, unknown>; headers?: Record<string, unknown>; [k: string]: unknown };
  [k: string]: unknown;
}

interface Operation {
  responses?: Record<string, Response>;
  [k: string]: unknown;
}

interface Response {
  description?: string;
  headers?: Record<string, unknown>;
  content?: Record<string, unknown>;
}

const SCHEMAS = "#/components/schemas/";
const HEADERS = "#/components/headers/";

const RESPONSE_HEADERS = {
  "Retry-After": {
    description:
      "Seconds to wait before trying again (a whole number, at least 1). Sent with 429 and 503 when waiting can help.",
    schema: { type: "integer", minimum: 1 },
  },
  "Inference-Header-Content-Length": {
    description:
      "With an application/octet-stream answer: the byte length of the JSON header that starts the body; " +
      "the outputs' bytes follow it, in the order the header lists them.",
    schema: { type: "integer", minimum: 0 },
  },
};

/** What each status means across the API; routes say more for their 2xx answers. */
const STATUS_TEXT: Record<string, string> = {
  "200": "OK",
  "202": "Accepted",
  "400":
    "Bad request: malformed JSON or binary framing, or a body, parameter or header that does not match its schema " +
    "(MALFORMED_JSON, VALIDATION_FAILED, BINARY_*; under /v2 also input the model's manifest refuses)",
  "401": "No API key, or an unknown one (UNAUTHORIZED)",
  "403": "The tenant may not use this model (FORBIDDEN)",
  "404": "Not found: JOB_NOT_FOUND, BATCH_NOT_FOUND, MODEL_NOT_FOUND, or NOT_FOUND for an unknown route",
  "409":
    "The Idempotency-Key names a different request (IDEMPOTENCY_CONFLICT) or a job whose result has expired (IDEMPOTENCY_EXPIRED)",
  "413": "The body is over the API's limit (PAYLOAD_TOO_LARGE); it was not read to its end",
  "415": "The body's media type is not one this route takes (UNSUPPORTED_MEDIA_TYPE)",
  "422":
    "The job does not match its model's signed manifest (TENSOR_*, INPUT_*, OUTPUT_UNKNOWN, BATCH_*, TIMEOUT_*); nothing was queued",
  "429": "Rate limit or quota reached (RATE_LIMITED, QUOTA_EXCEEDED); nothing was queued. Retry after Retry-After",
  "500": "The job failed while it ran (RUNTIME_ERROR, TIMEOUT, DEADLINE_EXCEEDED, CANCELLED, …)",
  "503":
    "The service cannot take the request now (QUEUE_FULL, QUEUE_UNAVAILABLE, OVERLOADED, or a model failing its integrity checks). Retry after Retry-After",
  "504": "RESULT_PENDING: the job was accepted but is not final in time; GET /v1/jobs/{id}?wait= answers it",
};

/** The Standard Webhooks headers of every notification (docs/api.md, "Completion webhooks"). */
const WEBHOOK_HEADERS = [
  ["webhook-id", "The notification's id: the same on every attempt (deduplicate on it)"],
  ["webhook-timestamp", "Unix seconds when this attempt was signed; refuse ones older than 5 minutes"],
  [
    "webhook-signature",
    "Space-separated `v1,<base64 HMAC-SHA256>` signatures over `<webhook-id>.<webhook-timestamp>.<raw body>`, " +
      "keyed with the tenant's base64-decoded `whsec_` secret (two during a rotation)",
  ],
].map(([name, description]) => ({ name, in: "header", required: true, description, schema: { type: "string" } }));

/** A completion notification sent to `url` (an OpenAPI runtime expression), as a callback of the operation. */
function completionCallback(url: string, what: string) {
  return {
    completion: {
      [url]: {
        post: {
          summary: `Completion notification: ${what}`,
          description:
            "Sent when it is final, to this URL or else to the tenant's registered callback URL; retried with " +
            "exponential backoff until a 2xx answer (up to WEBHOOK_ATTEMPTS). Verify the signature before trusting the body.",
          parameters: WEBHOOK_HEADERS,
          requestBody: {
            required: true,
            content: { "application/json": { schema: { $ref: `${SCHEMAS}WebhookEvent` } } },
          },
          responses: { "2XX": { description: "Received; any other answer (or none within 10 s) is retried" } },
        },
      },
    },
  };
}

/** Operations whose request may name a callback target, and where it names it. */
const CALLBACKS: Record<string, Record<string, ReturnType<typeof completionCallback>>> = {
  "/v1/jobs": {
    post: completionCallback("{$request.body#/callback}", "the job (job.completed, job.failed, job.cancelled)"),
  },
  "/v1/batches": {
    post: completionCallback("{$request.query.callback}", "the batch (batch.completed, batch.cancelled)"),
  },
};

export function finishDocument(doc: OpenApiDocument): OpenApiDocument {
  const out = structuredClone(doc);
  for (const [path, byMethod] of Object.entries(CALLBACKS)) {
    for (const [method, callbacks] of Object.entries(byMethod)) {
      const op = out.paths?.[path]?.[method];
      if (op) op.callbacks = callbacks;
    }
  }
  for (const operations of Object.values(out.paths ?? {})) {
    for (const op of Object.values(operations)) {
      for (const [status, response] of Object.entries(op.responses ?? {})) finishResponse(status, response);
    }
  }
  out.components = { ...out.components, headers: { ...out.components?.headers, ...RESPONSE_HEADERS } };
  return tidySchemas(out);
}

function finishResponse(status: string, r: Response): void {
  if (!r.description || r.description === "Default Response") r.description = STATUS_TEXT[status] ?? "Response";
  const headers: Record<string, unknown> = { ...r.headers };
  // Only refusals carry Retry-After (not, say, the 503 of a readiness probe).
  const refusal = [...refsIn(r.content, new Set())].some((n) => n === "Error" || n === "V2Error");
  if ((status === "429" || status === "503") && refusal) headers["Retry-After"] = { $ref: `${HEADERS}Retry-After` };
  if (r.content && "application/octet-stream" in r.content) {
    headers["Inference-Header-Content-Length"] = { $ref: `${HEADERS}Inference-Header-Content-Length` };
  }
  if (Object.keys(headers).length > 0) r.headers = headers;
}

/** Every schema $ref under `node`, by component name. */
function refsIn(node: unknown, into: Set<string>): Set<string> {
  if (Array.isArray(node)) for (const v of node) refsIn(v, into);
  else if (typeof node === "object" && node !== null) {
    for (const [k, v] of Object.entries(node)) {
      if (k === "$ref" && typeof v === "string" && v.startsWith(SCHEMAS)) into.add(v.slice(SCHEMAS.length));
      else refsIn(v, into);
    }
  }
  return into;
}

/**
 * Keeps the schemas the paths reach (directly or through other schemas), names a
 * request form `<id>` when `<id>` itself is not used or is the same schema, and sorts
 * them by name.
 */
function tidySchemas(doc: OpenApiDocument): OpenApiDocument {
  const all = doc.components?.schemas ?? {};
  const used = new Set<string>();
  const pending = [...refsIn(doc.paths, new Set())];
  while (pending.length > 0) {
    const name = pending.pop() as string;
    if (used.has(name)) continue;
    if (!(name in all)) throw new Error(`OpenAPI: $ref to a schema that is not a component: ${name}`);
    used.add(name);
    pending.push(...refsIn(all[name], new Set()));
  }
  // To a fixed point: a request form becomes the same as its twin once the forms it refers to are renamed.
  const rename = new Map<string, string>();
  for (let changed = true; changed; ) {
    changed = false;
    for (const name of used) {
      const plain = name.endsWith("Input") ? name.slice(0, -"Input".length) : undefined;
      if (!plain || rename.has(name)) continue;
      if (!used.has(plain) || same(renamed(all[name], rename), renamed(all[plain], rename))) {
        rename.set(name, plain);
        changed = true;
      }
    }
  }
  const schemas: Record<string, unknown> = {};
  for (const name of [...new Set([...used].map((n) => rename.get(n) ?? n))].sort()) {
    const source = used.has(name) ? name : ([...rename].find(([, to]) => to === name)?.[0] ?? name);
    schemas[name] = all[source];
  }
  return renamed({ ...doc, components: { ...doc.components, schemas } }, rename);
}

/** `node` with every $ref to a renamed schema pointing at its new name. */
function renamed<T>(node: T, rename: ReadonlyMap<string, string>): T {
  return JSON.parse(JSON.stringify(node), (k, v) =>
    k === "$ref" && typeof v === "string" && v.startsWith(SCHEMAS) && rename.has(v.slice(SCHEMAS.length))
      ? `${SCHEMAS}${rename.get(v.slice(SCHEMAS.length))}`
      : v,
  ) as T;
}

const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
