import { randomUUID } from "node:crypto";
import type { AuditSink } from "@citadel/audit";
import {
  BINARY_CONTENT_TYPE,
  BinaryBulkHeader,
  BinaryJobHeader,
  BinaryViewHeader,
  BulkEnvelope,
  BulkRequest,
  BulkResponse,
  CitadelError,
  httpStatusFor,
  INFERENCE_HEADER_LENGTH,
  JobAccepted,
  JobCancelled,
  JobRequest,
  JobView,
  ModelList,
} from "@citadel/contracts";
import type { JobQueues, RedisConn } from "@citadel/queue";
import type {
  Batches,
  BatchStore,
  DenialAggregator,
  ModelCatalog,
  RateLimiter,
  SubmitRequest,
  Submitter,
} from "@citadel/submit";
import { EVENT_LOOP_SAMPLE_MS, type Logger } from "@citadel/telemetry";
import type { Tenant, TenantStore } from "@citadel/tenants";
import { mergePolicies } from "@citadel/tensors";
import type { Queue } from "bullmq";
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from "fastify";
import { serializerCompiler, validatorCompiler, type ZodTypeProvider } from "fastify-type-provider-zod";
import { z } from "zod";
import { tenantAuth } from "./auth.js";
import { registerBatches } from "./batches.js";
import {
  type BinarySubmit,
  binaryBodyDoc,
  binaryHeaders,
  decodeBinarySubmit,
  sendBinaryView,
  wantsBinary,
} from "./binary-body.js";
import { readBinaryBody } from "./binary-reader.js";
import { type BoardOptions, registerBoard } from "./board.js";
import { contentCoding, DECODED_CODINGS, decodable, decodeBody } from "./content-encoding.js";
import { requestError, sendError } from "./errors.js";
import { EventStreams, streamJobEvents } from "./events.js";
import { parseJsonBody } from "./json-body.js";
import { type SheddingConfig, shedOnLag } from "./load-shedding.js";
import type { ApiMetrics } from "./metrics.js";
import { registerOpenApi } from "./openapi.js";
import { documentedAs, idempotencyHeader, json, v1Errors } from "./route-docs.js";
import { finalWithin, releaseBody, submitContext, submitOneRecorded } from "./submit-context.js";
import { INFER_ROUTES, registerV2 } from "./v2.js";

export interface AppDeps {
  log: Logger;
  redis: RedisConn;
  queues: JobQueues;
  catalog: ModelCatalog;
  tenants: TenantStore;
  submitter: Submitter;
  batches: Batches;
  batchStore: BatchStore;
  limiter: RateLimiter;
  audit: AuditSink;
  /** Auth denials and rate-limit refusals go through here: aggregated per source and window. */
  denials: DenialAggregator;
  metrics: ApiMetrics;
  board?: BoardOptions;
  /** The webhook delivery queue, shown on the board (when webhooks are on). */
  webhookQueue?: Queue;
  settings: {
    bodyLimit: number;
    maxJsonDepth: number;
    bulkMaxJobs: number;
    /** A batch file's bound (BATCH_MAX_BYTES), enforced as it streams. */
    batchMaxBytes: number;
    maxWaitMs: number;
    /** How long an accepted job may wait in the queue (bounds how long a /v2 infer waits for it). */
    queueTtlMs: number;
    requestTimeoutMs: number;
    maxEventLoopDelayMs: number;
    ipRate: number;
    ipBurst: number;
    trustProxyHops: number;
    openApiUi: boolean;
    /** GET /v1/jobs/{id}/events: heartbeat interval, and streams one tenant may hold open here. */
    sseHeartbeatMs: number;
    sseMaxStreamsPerTenant: number;
  };
}

const JobId = z.object({ id: z.string().min(1).max(200) });
/** The two bodies a submit route takes: JSON, or a KServe v2 binary body (decoded by the handler, which needs the header). */
const submitBody = (json: z.ZodType, header: z.ZodType) => ({
  content: {
    "application/json": { schema: json },
    [BINARY_CONTENT_TYPE]: { schema: binaryBodyDoc(header, "input") },
  },
});
/** A job view as JSON, or (completed, asked for with Accept or binary_data_output) as a binary body. */
const viewResponse = (description: string) => ({
  description,
  content: {
    "application/json": { schema: JobView },
    [BINARY_CONTENT_TYPE]: {
      schema: binaryBodyDoc(BinaryViewHeader, "output", "the job view, with result.outputs as output descriptors"),
    },
  },
});
const submitHeaders = binaryHeaders.extend(idempotencyHeader);
const waitQuery = (maxWaitMs: number) =>
  z.strictObject({
    wait: z.coerce
      .number()
      .int()
      .min(0)
      .max(maxWaitMs)
      .optional()
      .describe("Wait up to this many ms for the job to be final (bounded by the API's MAX_WAIT_MS)"),
  });

const SUBMIT_ROUTES = new Set(["/v1/jobs", "/v1/jobs/bulk", "/v1/batches", ...INFER_ROUTES]);

/**
 * The model a submit names when it is a string (the body's `model`, or a /v2 route's
 * `:name`), for audit and metric labels (which admit only published ones).
 */
function modelOf(req: FastifyRequest): string | undefined {
  const named = (o: unknown, key: string) => {
    if (typeof o !== "object" || o === null || !(key in o)) return undefined;
    const m = (o as Record<string, unknown>)[key];
    return typeof m === "string" && m.length <= 64 ? m : undefined;
  };
  return named(req.body, "model") ?? named(req.params, "name");
}

/** The producer API as a Fastify instance; process concerns live in server.ts. */
export async function buildApp(d: AppDeps): Promise<FastifyInstance> {
  const s = d.settings;
  const app = Fastify({
    loggerInstance: d.log as FastifyBaseLogger,
    bodyLimit: s.bodyLimit,
    requestTimeout: s.requestTimeoutMs,
    // A socket's idle timeout. A long-poll (?wait, /v2 infer) sends nothing until it ends,
    // so the bound covers the longest wait plus time to answer; a slow client is bounded
    // by requestTimeout while its request is read.
    connectionTimeout: s.requestTimeoutMs + s.maxWaitMs,
    trustProxy: s.trustProxyHops > 0 ? (_addr: string, hop: number) => hop < s.trustProxyHops : false,
    genReqId: () => randomUUID(),
    // Requests are counted in metrics and audited; per-request log lines would only add noise.
    logController: new LogController({ disableRequestLogging: true }),
    return503OnClosing: true,
    // Malformed percent-encoding or an over-long path parameter: the documented 400, not Fastify's own body.
    frameworkErrors: (err, req, reply) => {
      const msg =
        err.code === "FST_ERR_MAX_PARAM_LENGTH"
          ? "a path parameter is too long"
          : "the URL is not valid (bad percent-encoding)";
      void sendError(req, reply, new CitadelError("VALIDATION_FAILED", msg));
    },
  });

  // Graceful shutdown: once close() starts, every response (in-flight ones included)
  // closes its connection, so idle keep-alive sockets cannot hold the server open.
  let closing = false;
  const streams = new EventStreams(s.sseMaxStreamsPerTenant);
  app.addHook("preClose", (done) => {
    closing = true;
    // Event streams end now (their clients reconnect elsewhere), not after their longest
    // wait; long-polls were answered before the close began (server.ts).
    streams.abortAll();
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
  // KServe v2 binary bodies: buffered under the same bodyLimit with their tensor bytes
  // aligned (binary-reader.ts), decoded by the submit handlers.
  app.addContentTypeParser(BINARY_CONTENT_TYPE, readBinaryBody);
  // A compressed body (tritonclient's request_compression_algorithm) is inflated as it
  // arrives, the body limit applied to the inflated bytes; only for an authenticated
  // tenant (its auth and rate limits ran before this hook), so an anonymous client never
  // makes the server inflate. A coding not decoded here is refused by name rather than
  // misread as JSON or a binary header.
  app.addHook("preParsing", async (req, _reply, payload) => {
    const coding = contentCoding(req.headers["content-encoding"]);
    if (coding === undefined) return payload;
    if (!decodable(coding) || !req.tenant)
      throw new CitadelError(
        "UNSUPPORTED_MEDIA_TYPE",
        `Content-Encoding '${coding.slice(0, 32)}' is not supported: send the body uncompressed, or as ${DECODED_CODINGS}`,
      );
    return decodeBody(payload, coding, req.routeOptions.bodyLimit ?? s.bodyLimit);
  });

  // A submit refused before its handler ran (body parser, schema, headers) is audited
  // and counted here; refusals from the hooks and handlers record themselves.
  const refuse = (req: FastifyRequest, reply: FastifyReply, err: CitadelError): FastifyReply => {
    if (req.tenant && !req.audited && req.method === "POST" && SUBMIT_ROUTES.has(req.routeOptions.url ?? "")) {
      req.audited = true;
      d.submitter.rejected({ tenant: req.tenant, requestId: req.id, clientIp: req.ip }, modelOf(req), err);
    }
    return sendError(req, reply, err);
  };

  app.setErrorHandler((err, req, reply) => {
    const refusal = requestError(err, req.routeOptions.bodyLimit ?? s.bodyLimit);
    if (refusal) {
      // The client sees only the code; why the job store failed (refused, timed out) goes to the log.
      if (refusal.code === "QUEUE_UNAVAILABLE") req.log.warn({ err }, "answered 503: the job store is unavailable");
      return refuse(req, reply, refusal);
    }
    req.log.error({ err }, "unhandled error");
    return sendError(req, reply, new CitadelError("INTERNAL", "internal error"));
  });
  app.setNotFoundHandler((req, reply) => sendError(req, reply, new CitadelError("NOT_FOUND", "no such route")));

  // Load shedding: refuse with 503 when the event loop lags, before work piles up.
  shedOnLag(app, {
    maxDelayMs: s.maxEventLoopDelayMs,
    sampleMs: EVENT_LOOP_SAMPLE_MS,
    windowMs: 1000,
    shed: (req, reply) => sendError(req, reply, new CitadelError("OVERLOADED", "server is overloaded; retry later")),
  });

  app.addHook("onResponse", (req, reply, done) => {
    // A long-poll (`?wait=ms`) lasts as long as its job: labelled apart ("/v1/jobs?wait"),
    // so the latency alert and dashboards can leave it out.
    const waited = Number((req.query as { wait?: unknown } | undefined)?.wait) > 0;
    const route = `${req.routeOptions.url ?? "unmatched"}${waited ? "?wait" : ""}`;
    d.metrics.requests.inc({ route, method: req.method, status: String(reply.statusCode) });
    d.metrics.duration.observe({ route, method: req.method }, reply.elapsedTime / 1000);
    done();
  });

  // Liveness answers while the API sheds load: an overloaded pod is not a dead one.
  app.get("/healthz", { config: { liveness: true } satisfies SheddingConfig }, async () => ({ ok: true }));
  /** Ready: Redis answers and the catalog has loaded the registry once. */
  const readiness = async () => {
    const redis = await d.redis.ping().then(
      () => true,
      () => false,
    );
    return { ok: redis && d.catalog.ready, redis, registry: d.catalog.ready };
  };
  app.get("/readyz", async (_req, reply) => {
    const r = await readiness();
    return reply.code(r.ok ? 200 : 503).send(r);
  });

  if (s.openApiUi) await registerOpenApi(app);
  if (d.board) {
    await registerBoard(app, d.board, {
      ...(d.webhookQueue ? { webhookQueue: d.webhookQueue } : {}),
      queues: d.queues,
      catalog: d.catalog,
      denials: d.denials,
      limiter: d.limiter,
      metrics: d.metrics,
    });
  }

  const authenticate = tenantAuth({ ...d, ipRate: s.ipRate, ipBurst: s.ipBurst });
  await app.register(async (v1) => {
    v1.setValidatorCompiler(validatorCompiler);
    v1.setSerializerCompiler(serializerCompiler);
    const api = v1.withTypeProvider<ZodTypeProvider>();

    api.addHook("onRequest", authenticate);

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

    /**
     * Decodes and submits a request's one job. What the caller keeps of it is small: the
     * decoded body and its tensors are this function's alone.
     */
    const submitOneOf = async (req: FastifyRequest) => {
      const binary = binaryOf(req, false);
      const job: SubmitRequest = binary?.jobs[0] ?? (req.body as JobRequest);
      const accepted = await submitOneRecorded(d.submitter, req, job, submitContext(req));
      // Accepted: from here the job's own records stand for it, whatever this request meets.
      req.audited = true;
      const labels: Pick<JobView, "custom_id" | "metadata"> = {
        ...(job.custom_id !== undefined ? { custom_id: job.custom_id } : {}),
        ...(job.metadata !== undefined ? { metadata: job.metadata } : {}),
      };
      return { accepted, labels, binaryOutput: binary?.binaryOutput };
    };

    api.post(
      "/v1/jobs",
      {
        schema: {
          body: submitBody(JobRequest, BinaryJobHeader),
          headers: submitHeaders,
          querystring: waitQuery(s.maxWaitMs),
          response: {
            200: viewResponse("?wait saw the job finish in time (completed, failed or cancelled): its view"),
            202: json(JobAccepted, "Accepted: queued, and (with ?wait) not final in time"),
            ...v1Errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
          },
          operationId: "submitJob",
          tags: ["jobs"],
          summary:
            "Submit one job (JSON or KServe v2 binary); ?wait=ms answers 200 with the result if it is ready in time",
        },
      },
      async (req, reply) => {
        const { accepted, labels, binaryOutput } = await submitOneOf(req);
        releaseBody(req);
        if (req.query.wait === undefined) return reply.code(202).send(accepted);
        const view = await finalWithin(d.queues, req, accepted, req.query.wait, labels);
        if (!view) return reply.code(202).send(accepted);
        if (wantsBinary(req.headers.accept, binaryOutput)) return sendBinaryView(reply, view);
        return reply.code(200).send(view);
      },
    );

    api.post(
      "/v1/jobs/bulk",
      {
        schema: {
          body: submitBody(documentedAs(BulkEnvelope, BulkRequest), BinaryBulkHeader),
          headers: submitHeaders,
          response: {
            202: json(BulkResponse, "Each item answered on its own, in order: accepted, or refused with its error"),
            ...v1Errors(400, 401, 413, 415, 429, 503),
          },
          operationId: "submitJobs",
          tags: ["jobs"],
          summary: "Submit many jobs; each item is answered on its own",
        },
      },
      async (req, reply) => {
        const ctx = submitContext(req);
        const binary = binaryOf(req, true);
        const items = binary?.jobs ?? (req.body as z.infer<typeof BulkEnvelope>).jobs;
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
          querystring: waitQuery(s.maxWaitMs),
          response: {
            200: viewResponse("The job's view (final, or where it stands when ?wait ran out)"),
            ...v1Errors(400, 401, 404, 429, 503),
          },
          operationId: "getJob",
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

    api.get(
      "/v1/jobs/:id/events",
      {
        schema: {
          params: JobId,
          response: {
            200: {
              content: {
                "text/event-stream": {
                  schema: z.string().meta({
                    description:
                      "Server-Sent Events: `event: <status>` with the job's view as `data`, at once and at each " +
                      "change of status, the final one (completed, failed, cancelled) last; `: keep-alive` comments " +
                      "between; the stream ends at the final event or after MAX_WAIT_MS (reconnect to go on)",
                  }),
                },
              },
            },
            ...v1Errors(400, 401, 404, 429, 503),
          },
          operationId: "followJobEvents",
          tags: ["jobs"],
          summary: "Follow a job as Server-Sent Events until it is final",
        },
      },
      (req, reply) =>
        streamJobEvents(req, reply, req.params.id, {
          queues: d.queues,
          streams,
          maxWaitMs: s.maxWaitMs,
          heartbeatMs: s.sseHeartbeatMs,
        }),
    );

    api.delete(
      "/v1/jobs/:id",
      {
        schema: {
          params: JobId,
          response: {
            202: json(
              JobCancelled,
              "cancelled (removed from its queue), cancelling (running: it stops at its next check), or the final status it already had",
            ),
            ...v1Errors(400, 401, 404, 429, 503),
          },
          operationId: "cancelJob",
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
      {
        schema: {
          response: { 200: ModelList, ...v1Errors(401, 429, 503) },
          operationId: "listModels",
          tags: ["models"],
          summary: "Models this tenant may use, with specs and limits",
        },
      },
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
              // The policy this tenant's jobs get (the stricter of model's and tenant's settings).
              outputPolicy: mergePolicies(m.outputPolicy, tenant.outputPolicy[name]),
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

  await registerBatches(app, {
    batches: d.batches,
    store: d.batchStore,
    authenticate,
    settings: { maxBytes: s.batchMaxBytes },
  });

  await registerV2(app, {
    catalog: d.catalog,
    queues: d.queues,
    submitter: d.submitter,
    authenticate,
    readiness,
    settings: { maxJsonDepth: s.maxJsonDepth, maxWaitMs: s.maxWaitMs, queueTtlMs: s.queueTtlMs },
  });

  return app;
}
