import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import type { FastifyInstance } from "fastify";
import { jsonSchemaTransform, jsonSchemaTransformObject } from "fastify-type-provider-zod";
import { finishDocument, type OpenApiDocument } from "./openapi-finish.js";
import { documentedSchema } from "./route-docs.js";

type Transform = typeof jsonSchemaTransform;
type TransformObject = typeof jsonSchemaTransformObject;
type Content = Record<string, { schema: unknown }>;

function contentOf(body: unknown): Content | undefined {
  if (typeof body !== "object" || body === null || !("content" in body)) return undefined;
  return (body as { content: Content }).content;
}

/**
 * jsonSchemaTransform, plus request bodies given per content type (JSON and binary
 * submits): each media type's zod schema is converted on its own, as the library does
 * for responses. A body documented apart from what it validates (documentedAs) is
 * documented as its documented schema.
 */
const transform: Transform = (doc) => {
  const body = doc.schema?.body;
  const content = contentOf(body);
  if (!content) {
    return jsonSchemaTransform(body ? { ...doc, schema: { ...doc.schema, body: documentedSchema(body) } } : doc);
  }
  const out = jsonSchemaTransform({ ...doc, schema: { ...doc.schema, body: undefined } });
  const media: Content = {};
  for (const [type, { schema }] of Object.entries(content)) {
    const one = jsonSchemaTransform({ ...doc, schema: { body: documentedSchema(schema) } }) as {
      schema: { body: unknown };
    };
    media[type] = { schema: one.schema.body };
  }
  return { ...out, schema: { ...(out.schema as object), body: { content: media } } };
};

/** Components from zod's registry, then the finishing pass (headers, descriptions, unused components). */
const transformObject: TransformObject = (doc) =>
  finishDocument(jsonSchemaTransformObject(doc) as OpenApiDocument) as ReturnType<TransformObject>;

/** OpenAPI generated from the same zod schemas the routes validate with (docs/openapi.json is a copy). */
export async function registerOpenApi(app: FastifyInstance): Promise<void> {
  await app.register(swagger, {
    openapi: {
      openapi: "3.0.3",
      info: {
        title: "Citadel producer API",
        version: "1.0.0",
        description:
          "Queue-driven batch inference with sealed models. Job routes under /v1 (JSON or the KServe v2 " +
          "binary tensor data extension), batch files, and the Open Inference Protocol (KServe v2) under /v2. " +
          "Errors under /v1 are {error:{code,message,details?}} with a stable code; under /v2 {error:string}.",
      },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
      security: [{ bearer: [] }],
    },
    transform,
    transformObject,
    hideUntagged: true,
  });
  await app.register(swaggerUi, { routePrefix: "/docs" });
  app.get("/openapi.json", { schema: { hide: true } }, async () => app.swagger());
}
