import { randomUUID } from "node:crypto";
import type { AuditSink } from "@citadel/audit";
import {
  ApiErrorBody,
  BINARY_CONTENT_TYPE,
  BinaryBulkHeader,
  BinaryJobHeader,
  CitadelError,
  httpStatusFor,
  INFERENCE_HEADER_LENGTH,
  JobRequest,
  JobStatus,
  JobView,
} from "@citadel/contracts";
import { isFinal, isRedisUnavailable, type JobQueues, type Redis } from "@citadel/queue";
import {
  asCitadel,
  type DenialAggregator,
  type ModelCatalog,
  type RateLimiter,
  type SubmitContext,
  type SubmitRequest,
  type Submitter,
} from "@citadel/submit";
import type { Logger } from "@citadel/telemetry";
import type { Tenant, TenantStore } from "@citadel/tenants";
import underPressure from "@fastify/under-pressure";
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from "fastify";
import { serializerCompiler, validatorCompiler, type ZodTypeProvider } from "fastify-type-provider-zod";
import { z } from "zod";
import { type BinarySubmit, binaryBodyDoc, decodeBinarySubmit, sendBinaryView, wantsBinary } from "./binary-body.js";
import { type BoardOptions, registerBoard } from "./board.js";
import { parseJsonBody } from "./json-body.js";
import type { ApiMetrics } from "./metrics.js";
import { registerOpenApi } from "./openapi.js";

export interface AppDeps {
  log: Logger;
  redis: Redis;
  queues: JobQueues;
  catalog: ModelCatalog;
  tenants: TenantStore;
  submitter: Submitter;
  limiter: RateLimiter;
  audit: AuditSink;
  /** Auth denials and rate-limit refusals go through here: aggregated per source and window. */
  denials: DenialAggregator;
  metrics: ApiMetrics;
  board?: BoardOptions;
  settings: {
    bodyLimit: number;
    maxJsonDepth: number;
    bulkMaxJobs: number;
    maxWaitMs: number;
    requestTimeoutMs: number;
    maxEventLoopDelayMs: number;
    ipRate: number;
    ipBurst: number;
    trustProxyHops: number;
    openApiUi: boolean;
  };
}

declare module "fastify" {
  interface FastifyRequest {
    tenant?: Tenant;
    /** Set once this request's refusal has been audited and counted. */
    audited?: boolean;
  }
}

const JobId = z.object({ id: z.string().min(1).max(200) });
/** "queued" for a new job; an Idempotency-Key replay answers with its job's current status. */
const Accepted = z.object({ id: z.string(), status: JobStatus, model: z.string(), version: z.string() });
const BulkRequest = z.strictObject({ jobs: z.array(z.unknown()).min(1) });
/** The two bodies a submit route takes: JSON, or a KServe v2 binary body (decoded by the handler, which needs the header). */
const submitBody = (json: z.ZodType, header: z.ZodType) => ({
  content: {
    "application/json": { schema: json },
    [BINARY_CONTENT_TYPE]: { schema: binaryBodyDoc(header) },
  },
});
const BinaryHeaders = z.object({
  [INFERENCE_HEADER_LENGTH]: z
    .string()
    .optional()
    .describe("Byte length of the JSON header that starts a binary (application/octet-stream) body"),
});
/** A job view as JSON, or (completed, asked for with Accept or binary_data_output) as a binary body. */
const ViewResponse = {
  content: {
    "application/json": { schema: JobView },
    [BINARY_CONTENT_TYPE]: {
      schema: binaryBodyDoc(JobView, "the job view, with result.outputs as KServe output descriptors"),
    },
  },
};
const errorResponses = {
  400: ApiErrorBody,
  401: ApiErrorBody,
  403: ApiErrorBody,
  404: ApiErrorBody,
  422: ApiErrorBody,
  429: ApiErrorBody,
  503: ApiErrorBody,
};

const SUBMIT_ROUTES = new Set(["/v1/jobs", "/v1/jobs/bulk"]);

/** The body's model name when it is a string, for audit and metric labels (which admit only published ones). */
function modelOf(body: unknown): string | undefined {
  if (typeof body !== "object" || body === null || !("model" in body)) return undefined;
  const m = (body as { model: unknown }).model;
  return typeof m === "string" && m.length <= 64 ? m : undefined;
}

function sendError(reply: FastifyReply, err: CitadelError): FastifyReply {
  const status = httpStatusFor(err.code);
  const retry = err.details?.retryAfterMs;
  if (typeof retry === "number") reply.header("retry-after", Math.max(1, Math.ceil(retry / 1000)));
  // A refusal no wait can fix (a request larger than its burst) promises no retry time.
  else if ((status === 429 || status === 503) && err.details?.retryable !== false) reply.header("retry-after", 1);
  return reply.code(status).send(err.toJSON());
}

/** The producer API as a Fastify instance; process concerns live in server.ts. */
export async function buildApp(d: AppDeps): Promise<FastifyInstance> {
  const s = d.settings;
  const app = Fastify({
    loggerInstance: d.log as FastifyBaseLogger,
    bodyLimit: s.bodyLimit,
    requestTimeout: s.requestTimeoutMs,
    connectionTimeout: s.requestTimeoutMs,
    trustProxy: s.trustProxyHops > 0 ? (_addr: string, hop: number) => hop < s.trustProxyHops : false,
    genReqId: () => randomUUID(),
    // Requests are counted in metrics and audited; per-request log lines would only add noise.
    logController: new LogController({ disableRequestLogging: true }),
    return503OnClosing: true,
    // Malformed percent-encoding or an over-long path parameter: the documented 400, not Fastify's own body.
    frameworkErrors: (err, _req, reply) => {
      const msg =
        err.code === "FST_ERR_MAX_PARAM_LENGTH"
          ? "a path parameter is too long"
          : "the URL is not valid (bad percent-encoding)";
      void sendError(reply, new CitadelError("VALIDATION_FAILED", msg));
    },
  });

  // Graceful shutdown: once close() starts, every response (in-flight ones included)
  // closes its connection, so idle keep-alive sockets cannot hold the server open.
  let closing = false;
  app.addHook("preClose", (done) => {
    closing = true;
    done();
  });
  app.addHook("onSend", async (_req, reply, payload) => {
    if (closing) reply.header("connection", "close");
    return payload;
  });

  // Bodies are parsed strictly (UTF-8, depth, duplicate and prototype keys); Fastify
  // stops reading at bodyLimit, so an oversized body is never buffered whole.
  app.removeContentTypeParser(["application/json", "text/plain"]);
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, (_req, body, done) => {
    try {
      done(null, parseJsonBody(body as Buffer, s.maxJsonDepth));
    } catch (err) {
      done(err as Error, undefined);
    }
  });
  // KServe v2 binary bodies: buffered under the same bodyLimit, decoded by the submit handlers.
  app.addContentTypeParser(BINARY_CONTENT_TYPE, { parseAs: "buffer" }, (_req, body, done) => done(null, body));

  // A submit refused before its handler ran (body parser, schema, headers) is audited
  // and counted here; refusals from the hooks and handlers record themselves.
  const refuse = (req: FastifyRequest, reply: FastifyReply, err: CitadelError): FastifyReply => {
    if (req.tenant && !req.audited && req.method === "POST" && SUBMIT_ROUTES.has(req.routeOptions.url ?? "")) {
      req.audited = true;
      d.submitter.rejected({ tenant: req.tenant, requestId: req.id, clientIp: req.ip }, modelOf(req.body), err);
    }
    return sendError(reply, err);
  };

  app.setErrorHandler((err, req, reply) => {
    if (err instanceof CitadelError) return refuse(req, reply, err);
    const fe = err as {
      code?: string;
      validation?: { instancePath?: string; message?: string }[];
      statusCode?: number;
    };
    if (fe.validation) {
      const issues = fe.validation
        .slice(0, 10)
        .map((v) => ({ path: v.instancePath ?? "", message: v.message ?? "invalid" }));
      const where = issues[0]
        ? `${issues[0].path || "body"}: ${issues[0].message}`
        : "request does not match the schema";
      return refuse(req, reply, new CitadelError("VALIDATION_FAILED", where, { issues }));
    }
    switch (fe.code) {
      case "FST_ERR_CTP_BODY_TOO_LARGE":
        return refuse(req, reply, new CitadelError("PAYLOAD_TOO_LARGE", `request body exceeds ${s.bodyLimit} bytes`));
      case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
        return refuse(
          req,
          reply,
          new CitadelError("UNSUPPORTED_MEDIA_TYPE", "send application/json or application/octet-stream"),
        );
      case "FST_ERR_CTP_EMPTY_JSON_BODY":
      case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
        return refuse(req, reply, new CitadelError("MALFORMED_JSON", "request body is empty or its length is wrong"));
    }
    if (fe.statusCode === 503 && fe.code === "FST_UNDER_PRESSURE") {
      return sendError(reply, new CitadelError("OVERLOADED", "server is overloaded; retry later"));
    }
    if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
      return refuse(req, reply, new CitadelError("VALIDATION_FAILED", "bad request"));
    }
    if (isRedisUnavailable(err)) {
      return refuse(req, reply, new CitadelError("QUEUE_UNAVAILABLE", "the job store is unavailable; retry later"));
    }
    req.log.error({ err }, "unhandled error");
    return reply.code(500).send({ error: { code: "INTERNAL", message: "internal error" } });
  });
  app.setNotFoundHandler((_req, reply) =>
    reply.code(404).send({ error: { code: "NOT_FOUND", message: "no such route" } }),
  );

  // Load shedding: refuse with 503 when the event loop lags, before work piles up.
  await app.register(underPressure, {
    maxEventLoopDelay: s.maxEventLoopDelayMs,
    exposeStatusRoute: false,
    pressureHandler: (_req, reply) => {
      void sendError(reply, new CitadelError("OVERLOADED", "server is overloaded; retry later"));
    },
  });

  app.addHook("onResponse", (req, reply, done) => {
    const route = req.routeOptions.url ?? "unmatched";
    d.metrics.requests.inc({ route, method: req.method, status: String(reply.statusCode) });
    d.metrics.duration.observe({ route, method: req.method }, reply.elapsedTime / 1000);
    done();
  });

  app.get("/healthz", async () => ({ ok: true }));
  app.get("/readyz", async (_req, reply) => {
    const redisOk = await d.redis.ping().then(
      () => true,
      () => false,
    );
    const ok = redisOk && d.catalog.ready;
    return reply.code(ok ? 200 : 503).send({ ok, redis: redisOk, registry: d.catalog.ready });
  });

  if (s.openApiUi) await registerOpenApi(app);
  if (d.board) {
    await registerBoard(app, d.board, {
      queues: d.queues,
      catalog: d.catalog,
      denials: d.denials,
      limiter: d.limiter,
      metrics: d.metrics,
    });
  }

  await app.register(async (v1) => {
    v1.setValidatorCompiler(validatorCompiler);
    v1.setSerializerCompiler(serializerCompiler);
    const api = v1.withTypeProvider<ZodTypeProvider>();

    // The key is checked first (cached in-process); then one Redis call charges the
    // per-IP bucket and, for a known tenant, the tenant's bucket together. Unknown keys
    // still pay the per-IP bucket, which is what slows key guessing.
    api.addHook("onRequest", async (req) => {
      const ip = req.ip;
      const auth = req.headers.authorization;
      const key = auth?.startsWith("Bearer ") ? auth.slice(7).trim() : "";
      const tenant = key ? await d.tenants.authenticate(key) : null;
      const byIp = { scope: "ip", id: ip, rate: s.ipRate, burst: s.ipBurst };
      const limit = await d.limiter.takeAll(
        tenant
          ? [byIp, { scope: "tenant", id: tenant.id, rate: tenant.requestRate, burst: tenant.requestBurst }]
          : [byIp],
      );
      if (!limit.allowed) {
        const perIp = limit.scope === "ip";
        d.metrics.rejections.inc({ tenant: perIp ? "" : (tenant?.id ?? ""), model: "", reason: "RATE_LIMITED" });
        d.denials.note({
          event: "rate.limited",
          ...(perIp || !tenant ? {} : { tenant: tenant.id }),
          clientIp: ip,
          requestId: req.id,
          detail: perIp ? "ip" : "requests",
        });
        req.audited = true;
        throw new CitadelError(
          "RATE_LIMITED",
          perIp ? "too many requests from this address" : "request rate limit reached",
          { retryAfterMs: limit.retryAfterMs, scope: perIp ? "ip" : "tenant" },
        );
      }
      if (!tenant) {
        d.metrics.rejections.inc({ tenant: "", model: "", reason: "UNAUTHORIZED" });
        d.denials.note({
          event: "auth.denied",
          clientIp: ip,
          requestId: req.id,
          detail: key ? "unknown key" : "no key",
        });
        req.audited = true;
        throw new CitadelError("UNAUTHORIZED", "a valid API key is required (Authorization: Bearer <key>)");
      }
      req.tenant = tenant;
    });

    const ctxOf = (req: FastifyRequest): SubmitContext => {
      const idem = req.headers["idempotency-key"];
      if (idem !== undefined && (typeof idem !== "string" || idem.length < 1 || idem.length > 200)) {
        throw new CitadelError("VALIDATION_FAILED", "Idempotency-Key must be 1-200 characters");
      }
      return {
        tenant: req.tenant as Tenant,
        requestId: req.id,
        clientIp: req.ip,
        ...(idem ? { idempotencyKey: idem } : {}),
      };
    };

    /**
     * The binary body of a submit, decoded (a framing fault throws 400), or undefined for
     * JSON. Fastify validates a body by its content type, so a request with no body (and
     * no content type) reached here unvalidated: refused.
     */
    const binaryOf = (req: FastifyRequest, bulk: boolean): BinarySubmit | undefined => {
      if (req.body === undefined || req.body === null) {
        throw new CitadelError(
          "VALIDATION_FAILED",
          "a request body is required (application/json, or application/octet-stream for binary tensors)",
        );
      }
      return Buffer.isBuffer(req.body)
        ? decodeBinarySubmit(req.headers[INFERENCE_HEADER_LENGTH], req.body, {
            bulk,
            maxJsonDepth: s.maxJsonDepth,
            bulkMaxJobs: s.bulkMaxJobs,
          })
        : undefined;
    };

    /** The job's view once final within `ms`, else undefined (the job stands accepted whatever the wait meets). */
    const finalWithin = async (
      req: FastifyRequest,
      a: z.infer<typeof Accepted>,
      ms: number,
    ): Promise<JobView | undefined> => {
      try {
        // A job this request queued (or a replay that found it queued) is not final yet: no read before waiting.
        const submitted = a.status === "queued" ? { submitted: { version: a.version } } : {};
        const view = await d.queues.waitForFinish(a.id, (req.tenant as Tenant).id, ms, submitted);
        return isFinal(view.status) ? view : undefined;
      } catch (err) {
        req.log.warn({ err, jobId: a.id }, "waiting for a submitted job failed; answering 202");
        return undefined;
      }
    };

    api.post(
      "/v1/jobs",
      {
        schema: {
          body: submitBody(JobRequest, BinaryJobHeader),
          headers: BinaryHeaders,
          querystring: z.strictObject({ wait: z.coerce.number().int().min(0).max(s.maxWaitMs).optional() }),
          response: { 200: ViewResponse, 202: Accepted, ...errorResponses },
          tags: ["jobs"],
          summary:
            "Submit one job (JSON or KServe v2 binary); ?wait=ms answers 200 with the result if it is ready in time",
        },
      },
      async (req, reply) => {
        const ctx = ctxOf(req);
        const binary = binaryOf(req, false);
        const job: SubmitRequest = binary?.jobs[0] ?? (req.body as JobRequest);
        let accepted: Awaited<ReturnType<Submitter["submitOne"]>>;
        try {
          accepted = await d.submitter.submitOne(job, ctx);
        } catch (err) {
          const e = asCitadel(err);
          d.submitter.rejected(ctx, job.model, e);
          req.audited = true;
          throw e;
        }
        const view = req.query.wait === undefined ? undefined : await finalWithin(req, accepted, req.query.wait);
        if (!view) return reply.code(202).send(accepted);
        if (wantsBinary(req.headers.accept, binary?.binaryOutput)) return sendBinaryView(reply, view);
        return reply.code(200).send(view);
      },
    );

    api.post(
      "/v1/jobs/bulk",
      {
        schema: {
          body: submitBody(BulkRequest, BinaryBulkHeader),
          headers: BinaryHeaders,
          response: {
            202: z.object({
              jobs: z.array(
                z.union([
                  Accepted.extend({ index: z.number() }),
                  ApiErrorBody.extend({ index: z.number(), status: z.number() }),
                ]),
              ),
            }),
            ...errorResponses,
          },
          tags: ["jobs"],
          summary: "Submit many jobs; each item is answered on its own",
        },
      },
      async (req, reply) => {
        const ctx = ctxOf(req);
        const binary = binaryOf(req, true);
        const items = binary?.jobs ?? (req.body as z.infer<typeof BulkRequest>).jobs;
        if (items.length > s.bulkMaxJobs) {
          throw new CitadelError("VALIDATION_FAILED", `at most ${s.bulkMaxJobs} jobs per bulk request`);
        }
        // A binary bulk's header passed its schema whole; JSON items are checked one by one.
        const parsed = binary
          ? binary.jobs.map((data) => ({ success: true as const, data }))
          : items.map((j) => JobRequest.safeParse(j));
        const valid = parsed.flatMap((p, index) => (p.success ? [{ index, req: p.data }] : []));
        const results = await d.submitter.submitMany(
          valid.map((v) => v.req),
          ctx,
        );
        // Every refused item answers for itself; together they are one audit record.
        const refused: { model?: string; error: CitadelError }[] = [];
        const out: unknown[] = parsed.map((p, index) => {
          if (p.success) return null;
          const issue = p.error.issues[0];
          const e = new CitadelError(
            "VALIDATION_FAILED",
            `${issue?.path.join(".") || "job"}: ${issue?.message ?? "invalid"}`,
          );
          refused.push({ error: e });
          return { index, status: 400, ...e.toJSON() };
        });
        valid.forEach((v, k) => {
          const r = results[k];
          if (r && "error" in r) refused.push({ model: v.req.model, error: r.error });
          out[v.index] =
            r && "error" in r
              ? { index: v.index, status: httpStatusFor(r.error.code), ...r.error.toJSON() }
              : { index: v.index, ...r };
        });
        d.submitter.rejectedItems(ctx, refused);
        req.audited = true;
        return reply.code(202).send({ jobs: out as never });
      },
    );

    api.get(
      "/v1/jobs/:id",
      {
        schema: {
          params: JobId,
          querystring: z.strictObject({ wait: z.coerce.number().int().min(0).max(s.maxWaitMs).optional() }),
          response: { 200: ViewResponse, ...errorResponses },
          tags: ["jobs"],
          summary:
            "Job status and result; ?wait=ms long-polls; Accept: application/octet-stream answers a result binary",
        },
      },
      async (req, reply) => {
        const tenant = (req.tenant as Tenant).id;
        const view = await d.queues.waitForFinish(req.params.id, tenant, req.query.wait ?? 0);
        if (wantsBinary(req.headers.accept)) return sendBinaryView(reply, view);
        return reply.code(200).send(view);
      },
    );

    api.delete(
      "/v1/jobs/:id",
      {
        schema: {
          params: JobId,
          response: { 202: z.object({ id: z.string(), status: z.string() }), ...errorResponses },
          tags: ["jobs"],
          summary: "Cancel a job",
        },
      },
      async (req, reply) => {
        const tenant = req.tenant as Tenant;
        // cancel() removes a queued job at most once (and gives its quota back); only
        // that call audits it, so concurrent DELETEs record one cancellation.
        const r = await d.queues.cancel(req.params.id, tenant.id);
        if (r.removed) {
          d.audit.record("job.cancelled", {
            tenant: tenant.id,
            clientIp: req.ip,
            requestId: req.id,
            jobId: req.params.id,
            model: r.removed.model,
            version: r.removed.version,
            outcome: "cancelled",
          });
        }
        return reply.code(202).send({ id: req.params.id, status: r.status });
      },
    );

    api.get(
      "/v1/models",
      { schema: { tags: ["models"], summary: "Models this tenant may use, with specs and limits" } },
      async (req) => {
        const tenant = req.tenant as Tenant;
        const models = [];
        for (const name of d.catalog.models()) {
          if (!tenant.models.includes("*") && !tenant.models.includes(name)) continue;
          const routing = d.catalog.routingOf(name);
          if (!routing) continue;
          const versions = [];
          for (const v of new Set([routing.stable, ...(routing.canary ? [routing.canary] : [])])) {
            const m = await d.catalog.manifest(name, v).catch(() => null);
            if (!m) continue;
            versions.push({
              version: v,
              format: m.format,
              inputs: m.inputs,
              outputs: m.outputs,
              maxBatch: m.maxBatch,
              timeoutMs: m.timeoutMs,
              outputPolicy: { ...m.outputPolicy, ...(tenant.outputPolicy[name] ?? {}) },
            });
          }
          models.push({
            name,
            stable: routing.stable,
            canary: routing.canary,
            canaryWeight: routing.canaryWeight,
            versions,
          });
        }
        return { models };
      },
    );
  });

  return app;
}
