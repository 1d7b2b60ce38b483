import { Readable } from "node:stream";
import {
  BATCH_CONTENT_TYPES,
  BatchLine,
  BatchResultLine,
  BatchView,
  CallbackUrl,
  CitadelError,
} from "@citadel/contracts";
import type { Batches, BatchStore } from "@citadel/submit";
import type { Tenant } from "@citadel/tenants";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { serializerCompiler, validatorCompiler, type ZodTypeProvider } from "fastify-type-provider-zod";
import { z } from "zod";
import { componentRef, json, v1Errors } from "./route-docs.js";
import { submitContext } from "./submit-context.js";

/**
 * Batch files in the OpenAI Batch API's style (docs/api.md "Batches"): POST a JSONL
 * file, read its status, stream its results, cancel it. The body is never buffered
 * whole: its own content-type parser hands the request stream to the ingest
 * (@citadel/submit Batches), which reads it line by line under BATCH_* bounds.
 */
export interface BatchRouteDeps {
  batches: Batches;
  store: BatchStore;
  authenticate: (req: FastifyRequest) => Promise<void>;
  settings: { maxBytes: number };
}

const BatchId = z.object({ id: z.string().min(1).max(200) });
const tags = ["batches"];

const jsonlBody = z.any().meta({
  type: "string",
  description:
    "JSONL: one request per line, {custom_id, method?: POST, url?: /v1/jobs, body: <a POST /v1/jobs body>}; " +
    "blank lines are skipped",
  "x-jsonl-line": componentRef(BatchLine, "input"),
});
const jsonlResults = z.any().meta({
  type: "string",
  description: "JSONL: one line per request line of the batch file, in its order",
  "x-jsonl-line": componentRef(BatchResultLine, "output"),
});

export async function registerBatches(app: FastifyInstance, d: BatchRouteDeps): Promise<void> {
  await app.register(async (scope) => {
    scope.setValidatorCompiler(validatorCompiler);
    scope.setSerializerCompiler(serializerCompiler);
    // This scope's own parser: the raw request stream, read by the ingest as it arrives.
    scope.addContentTypeParser([...BATCH_CONTENT_TYPES], (_req, payload, done) => done(null, payload));
    const api = scope.withTypeProvider<ZodTypeProvider>();
    api.addHook("onRequest", d.authenticate);

    api.post(
      "/v1/batches",
      {
        // The file's own bound: what the JSONL reader takes, and what a compressed file may inflate to.
        bodyLimit: d.settings.maxBytes,
        schema: {
          body: { content: Object.fromEntries(BATCH_CONTENT_TYPES.map((t) => [t, { schema: jsonlBody }])) },
          querystring: z.strictObject({
            callback: CallbackUrl.optional().meta({
              description:
                "where to notify the batch's completion (a signed webhook), instead of the tenant's callback URL; " +
                "only for a tenant allowed to name one",
            }),
          }),
          response: {
            202: json(BatchView, "The batch, its file read to the end: each line accepted as a job or refused alone"),
            ...v1Errors(400, 401, 403, 413, 415, 429, 503),
          },
          operationId: "createBatch",
          tags,
          summary: "Submit a batch file (JSONL, streamed); each line is a job, refused alone when it is malformed",
        },
      },
      async (req, reply) => {
        const ctx = submitContext(req);
        if (ctx.idempotencyKey) {
          throw new CitadelError(
            "VALIDATION_FAILED",
            "POST /v1/batches takes no Idempotency-Key (custom_id names lines)",
          );
        }
        const length = Number(req.headers["content-length"]);
        // A declared length past the bound is refused before a byte is read.
        if (length > d.settings.maxBytes) {
          reply.header("connection", "close");
          throw new CitadelError("PAYLOAD_TOO_LARGE", `the batch file exceeds ${d.settings.maxBytes} bytes`, {
            limit: d.settings.maxBytes,
          });
        }
        const body = req.body as Readable | undefined;
        if (body === undefined || body === null) {
          throw new CitadelError("VALIDATION_FAILED", "a JSONL body is required (application/jsonl)");
        }
        // Another media type this server parses (JSON) reached the route parsed: not a batch file.
        if (!(body instanceof Readable)) {
          throw new CitadelError("UNSUPPORTED_MEDIA_TYPE", "send the batch file as application/jsonl");
        }
        try {
          const id = await d.batches.ingest(body, ctx, { callback: req.query.callback });
          return reply.code(202).send(await d.store.view(ctx.tenant.id, id));
        } finally {
          // A body not read to its end (refused, or its batch cancelled meanwhile): the connection closes after the answer.
          if (!body.readableEnded) reply.header("connection", "close");
        }
      },
    );

    api.get(
      "/v1/batches/:id",
      {
        schema: {
          params: BatchId,
          response: { 200: json(BatchView, "The batch's status and counts"), ...v1Errors(400, 401, 404, 429, 503) },
          operationId: "getBatch",
          tags,
          summary: "A batch's status and counts",
        },
      },
      async (req) => d.store.view((req.tenant as Tenant).id, req.params.id),
    );

    api.get(
      "/v1/batches/:id/results",
      {
        schema: {
          params: BatchId,
          response: {
            200: {
              description: "JSONL, one BatchResultLine per request line of the batch file, in its order",
              content: { "application/jsonl": { schema: jsonlResults } },
            },
            ...v1Errors(400, 401, 404, 429, 503),
          },
          operationId: "getBatchResults",
          tags,
          summary:
            "A batch's results as JSONL, one line per request line (custom_id, line, job id, status, result or error)",
        },
      },
      async (req, reply) => {
        const tenant = (req.tenant as Tenant).id;
        // Unknown (or another tenant's) is 404 before the stream starts.
        await d.store.view(tenant, req.params.id);
        const lines = d.store.results(tenant, req.params.id);
        const out = Readable.from(
          (async function* () {
            for await (const l of lines) yield `${JSON.stringify(l)}\n`;
          })(),
        );
        return reply.code(200).type("application/jsonl").send(out);
      },
    );

    api.delete(
      "/v1/batches/:id",
      {
        schema: {
          params: BatchId,
          response: {
            202: json(BatchView, "The batch, cancelling or cancelled"),
            ...v1Errors(400, 401, 404, 429, 503),
          },
          operationId: "cancelBatch",
          tags,
          summary: "Cancel a batch: queued jobs are removed, active ones cancelled as DELETE /v1/jobs/:id does",
        },
      },
      async (req, reply) => {
        const ctx = submitContext(req);
        await d.store.view(ctx.tenant.id, req.params.id);
        await d.batches.cancel(ctx, req.params.id);
        return reply.code(202).send(await d.store.view(ctx.tenant.id, req.params.id));
      },
    );
  });
}
