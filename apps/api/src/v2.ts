import { readFileSync } from "node:fs";
import {
  BINARY_CONTENT_TYPE,
  CitadelError,
  ErrorCode,
  INFERENCE_HEADER_LENGTH,
  type JobView,
  type ManifestBody,
  V2InferRequest,
  V2InferResponse,
  V2ModelMetadata,
  V2ServerMetadata,
} from "@citadel/contracts";
import type { JobQueues } from "@citadel/queue";
import type { ModelCatalog, SubmitRequest, Submitter } from "@citadel/submit";
import { allowsModel, type Tenant } from "@citadel/tenants";
import { mergePolicies, v2Answer, v2Inputs, v2ModelMetadata, v2OutputNames } from "@citadel/tensors";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { serializerCompiler, validatorCompiler, type ZodTypeProvider } from "fastify-type-provider-zod";
import { z } from "zod";
import { binaryBodyDoc, binaryHeaders, decodeBinaryInfer, decodeJsonInfer } from "./binary-body.js";
import { readBinaryBody } from "./binary-reader.js";
import { sendError } from "./errors.js";
import type { SheddingConfig } from "./load-shedding.js";
import { idempotencyHeader, json, v2Errors } from "./route-docs.js";
import { finalWithin, releaseBody, submitContext, submitOneRecorded } from "./submit-context.js";

/**
 * The Open Inference Protocol (KServe v2) over HTTP, beside /v1 and on the same
 * machinery: the same Bearer auth and rate limits (tenantAuth), the same submit path
 * (limits, quota, validation against the signed manifest, audit), the same waiting as
 * POST /v1/jobs?wait and the worker's output policy. Health is open, like /healthz.
 * Protocol mapping lives in @citadel/tensors (open-inference.ts); errors take the
 * protocol's shape in errors.ts.
 */

export interface V2Deps {
  catalog: ModelCatalog;
  queues: JobQueues;
  submitter: Submitter;
  authenticate: (req: FastifyRequest) => Promise<void>;
  readiness: () => Promise<{ ok: boolean }>;
  settings: { maxJsonDepth: number; maxWaitMs: number; queueTtlMs: number };
}

/** The routes whose refusals are audited as refused submits (app.ts). */
export const INFER_ROUTES = ["/v2/models/:name/infer", "/v2/models/:name/versions/:version/infer"] as const;

const ModelName = z.object({ name: z.string().min(1).max(200) });
const ModelNameVersion = ModelName.extend({ version: z.string().min(1).max(200) });
type ModelParams = { name: string; version?: string };

/** Each model route with and without a version: its path, its parameters, and a suffix for its operationId. */
const MODEL_PATHS = [
  { path: "/v2/models/:name", params: ModelName, op: "" },
  { path: "/v2/models/:name/versions/:version", params: ModelNameVersion, op: "Version" },
] as const;

const tags = ["v2 (Open Inference Protocol)"];

/** The server's name and version (apps/api/package.json, one directory above src/ and dist/ alike). */
function serverMetadata(): V2ServerMetadata {
  const pkg = z
    .object({ version: z.string() })
    .parse(JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")));
  return { name: "citadel", version: pkg.version, extensions: ["binary_tensor_data"] };
}

export async function registerV2(app: FastifyInstance, d: V2Deps): Promise<void> {
  const metadata = serverMetadata();

  // Probes carry no key, as /healthz and /readyz.
  await app.register(async (open) => {
    open.setValidatorCompiler(validatorCompiler);
    open.setSerializerCompiler(serializerCompiler);
    const api = open.withTypeProvider<ZodTypeProvider>();
    api.get(
      "/v2/health/live",
      {
        config: { liveness: true } satisfies SheddingConfig,
        schema: {
          response: { 200: z.object({ live: z.boolean() }) },
          operationId: "v2ServerLive",
          security: [],
          tags,
          summary: "Server live",
        },
      },
      async () => ({ live: true }),
    );
    api.get(
      "/v2/health/ready",
      {
        schema: {
          response: {
            200: z.object({ ready: z.boolean() }),
            503: json(z.object({ ready: z.boolean() }), "Not ready"),
          },
          operationId: "v2ServerReady",
          security: [],
          tags,
          summary: "Server ready: Redis answers and the model registry is loaded (as /readyz)",
        },
      },
      async (_req, reply) => {
        const { ok } = await d.readiness();
        return reply.code(ok ? 200 : 503).send({ ready: ok });
      },
    );
  });

  await app.register(async (v2) => {
    v2.setValidatorCompiler(validatorCompiler);
    v2.setSerializerCompiler(serializerCompiler);
    const api = v2.withTypeProvider<ZodTypeProvider>();
    api.addHook("onRequest", d.authenticate);
    // Clients send infer bodies with any Content-Type or none (tritonclient.http sets none,
    // its aio client says application/octet-stream for JSON): the bytes are read as a
    // binary body, and Inference-Header-Content-Length, not the media type, says how to
    // cut them (decodeBody), as Triton does. application/json keeps the strict parser.
    v2.addContentTypeParser("*", readBinaryBody);
    // The protocol's clients compare the media type exactly (KServe's error path does).
    v2.addHook("onSend", async (_req, reply, payload) => {
      const type = reply.getHeader("content-type");
      if (typeof type === "string" && type.startsWith("application/json;"))
        reply.header("content-type", "application/json");
      return payload;
    });

    api.get(
      "/v2",
      {
        schema: {
          response: { 200: V2ServerMetadata, ...v2Errors(401, 429, 503) },
          operationId: "v2ServerMetadata",
          tags,
          summary: "Server metadata",
        },
      },
      async () => metadata,
    );

    for (const { path, params, op } of MODEL_PATHS) {
      api.get(
        path,
        {
          schema: {
            params,
            response: { 200: V2ModelMetadata, ...v2Errors(400, 401, 404, 429, 503) },
            operationId: `v2Model${op}Metadata`,
            tags,
            summary: "Model metadata from the signed manifest (404 for a model this tenant may not use)",
          },
        },
        async (req) => {
          const p: ModelParams = req.params;
          const tenant = req.tenant as Tenant;
          const m = await served(d.catalog, tenant, p);
          // The outputs as this tenant receives them, under the same policy its jobs get.
          const policy = mergePolicies(m.manifest.outputPolicy, tenant.outputPolicy[p.name]);
          return v2ModelMetadata(p.name, m.versions, m.manifest, policy);
        },
      );
      api.get(
        `${path}/ready`,
        {
          schema: {
            params,
            response: {
              200: z.object({ name: z.string(), ready: z.boolean() }),
              ...v2Errors(400, 401, 404, 429, 503),
            },
            operationId: `v2Model${op}Ready`,
            tags,
            summary: "Model ready: routed, and its manifest verifies",
          },
        },
        async (req) => {
          const p: ModelParams = req.params;
          await served(d.catalog, req.tenant as Tenant, p);
          return { name: p.name, ready: true };
        },
      );
    }

    for (const [path, params, op] of [
      [INFER_ROUTES[0], ModelName, "v2ModelInfer"],
      [INFER_ROUTES[1], ModelNameVersion, "v2ModelVersionInfer"],
    ] as const) {
      api.post(
        path,
        {
          schema: {
            params,
            headers: binaryHeaders.extend(idempotencyHeader),
            body: {
              content: {
                "application/json": { schema: V2InferRequest },
                [BINARY_CONTENT_TYPE]: { schema: binaryBodyDoc(V2InferRequest, "input", "the infer request") },
              },
            },
            response: {
              200: {
                description: "The job completed: its outputs, as JSON or (asked for, or not exact in JSON) as bytes",
                content: {
                  "application/json": { schema: V2InferResponse },
                  [BINARY_CONTENT_TYPE]: {
                    schema: binaryBodyDoc(
                      V2InferResponse,
                      "output",
                      "the infer answer, binary outputs with binary_data_size",
                    ),
                  },
                },
              },
              ...v2Errors(400, 401, 404, 409, 413, 415, 429, 500, 503, 504),
            },
            operationId: op,
            tags,
            summary:
              "Infer, synchronously: the job is queued like POST /v1/jobs and awaited; 504 RESULT_PENDING names a job not final in time",
          },
        },
        (req, reply) => infer(d, req, reply),
      );
    }
  });
}

/**
 * The model (and version) a request names, if this tenant may use it and it is served;
 * a model the tenant may not use is not found, in the same words as one never published.
 */
async function served(
  catalog: ModelCatalog,
  tenant: Tenant,
  p: ModelParams,
): Promise<{ version: string; versions: string[]; manifest: ManifestBody }> {
  const routing = allowsModel(tenant, p.name) ? catalog.routingOf(p.name) : undefined;
  if (!routing) throw new CitadelError("MODEL_NOT_FOUND", `model '${p.name}' is not published`);
  const versions = [...new Set([routing.stable, ...(routing.canary ? [routing.canary] : [])])];
  if (p.version !== undefined && !versions.includes(p.version)) {
    throw new CitadelError("MODEL_NOT_FOUND", `model '${p.name}' has no version '${p.version}' that is served`);
  }
  const version = p.version ?? routing.stable;
  return { version, versions, manifest: await catalog.manifest(p.name, version) };
}

async function infer(d: V2Deps, req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
  const params = req.params as ModelParams;
  if (!allowsModel(req.tenant as Tenant, params.name)) {
    throw new CitadelError("MODEL_NOT_FOUND", `model '${params.name}' is not published`);
  }
  const { accepted, answerAs } = await submitInfer(d, req, params);
  releaseBody(req);
  // The model's timeout bounds the run and QUEUE_TTL_MS the wait before it; past both the
  // job is final anyway. MAX_WAIT_MS bounds how long a request is held.
  const manifest = await d.catalog.manifest(params.name, accepted.version);
  const waitMs = Math.min(d.settings.maxWaitMs, d.settings.queueTtlMs + manifest.timeoutMs);
  const view = await finalWithin(d.queues, req, accepted, waitMs);
  if (!view) {
    return sendError(
      req,
      reply,
      new CitadelError(
        "RESULT_PENDING",
        `job '${accepted.id}' is accepted but not final after ${waitMs} ms; GET /v1/jobs/${accepted.id}?wait=<ms> answers it`,
      ),
    );
  }
  if (view.status !== "completed" || !view.result) return sendError(req, reply, jobFailure(view));
  const answer = v2Answer(answerAs, view.result.outputs, {
    modelName: view.model,
    modelVersion: view.version,
    id: answerAs.id ?? view.id,
    jobId: view.id,
  });
  if ("json" in answer) return reply.code(200).send(answer.json);
  return reply
    .code(200)
    .header("content-type", BINARY_CONTENT_TYPE)
    .header(INFERENCE_HEADER_LENGTH, answer.headerLength)
    .send(answer.body);
}

/**
 * Decodes and submits an infer request as one job. The caller keeps only what the answer
 * needs (the request's id and output choices), not its tensors.
 */
async function submitInfer(d: V2Deps, req: FastifyRequest, params: ModelParams) {
  const { request, data } = decodeBody(req, d.settings.maxJsonDepth);
  // KServe's client repeats the model (and version) in the body: it must agree with the path.
  if (request.model_name !== undefined && request.model_name !== params.name)
    throw new CitadelError(
      "VALIDATION_FAILED",
      `model_name '${request.model_name}' is not the path's '${params.name}'`,
    );
  if (request.model_version !== undefined && params.version !== undefined && request.model_version !== params.version)
    throw new CitadelError(
      "VALIDATION_FAILED",
      `model_version '${request.model_version}' is not the path's '${params.version}'`,
    );
  const version = params.version ?? request.model_version;
  const outputs = v2OutputNames(request);
  const job: SubmitRequest = {
    model: params.name,
    ...(version !== undefined ? { version } : {}),
    inputs: v2Inputs(request, data),
    ...(outputs ? { outputs } : {}),
    priority: "normal",
  };
  const accepted = await submitOneRecorded(d.submitter, req, job, submitContext(req));
  // Accepted: from here the job's own records stand for it, whatever this request meets.
  req.audited = true;
  const answerAs: Pick<V2InferRequest, "id" | "parameters" | "outputs"> = {
    ...(request.id !== undefined ? { id: request.id } : {}),
    ...(request.parameters !== undefined ? { parameters: request.parameters } : {}),
    ...(request.outputs !== undefined ? { outputs: request.outputs } : {}),
  };
  return { accepted, answerAs };
}

/** An infer body: JSON, or a binary body cut at its header (framing faults refuse it, 400). */
function decodeBody(req: FastifyRequest, maxJsonDepth: number): { request: V2InferRequest; data?: Uint8Array } {
  if (req.body === undefined || req.body === null) {
    throw new CitadelError(
      "VALIDATION_FAILED",
      "a request body is required (application/json, or application/octet-stream for binary tensors)",
    );
  }
  if (!Buffer.isBuffer(req.body)) return { request: req.body as V2InferRequest };
  const headerLength = req.headers[INFERENCE_HEADER_LENGTH];
  if (headerLength !== undefined) return decodeBinaryInfer(headerLength, req.body, maxJsonDepth);
  try {
    return { request: decodeJsonInfer(req.body, maxJsonDepth) };
  } catch (err) {
    // Bytes labelled binary that are no JSON request either: most likely a binary body
    // whose header length was left out, and the refusal says so.
    const binary = req.headers["content-type"]?.startsWith(BINARY_CONTENT_TYPE);
    if (binary && err instanceof CitadelError && err.code === "MALFORMED_JSON")
      throw new CitadelError(
        "BINARY_HEADER_LENGTH_INVALID",
        `a binary body needs ${INFERENCE_HEADER_LENGTH} (and this one is no JSON request either)`,
      );
    throw err;
  }
}

/** A final job that did not complete, as the error it answers with (its code, or CANCELLED). */
function jobFailure(view: JobView): CitadelError {
  if (!view.error) return new CitadelError("CANCELLED", `job '${view.id}' was ${view.status}`);
  const code = ErrorCode.safeParse(view.error.code);
  return new CitadelError(code.success ? code.data : "INTERNAL", `job '${view.id}': ${view.error.message}`);
}
