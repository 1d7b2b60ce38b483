import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import type { FastifyInstance } from "fastify";
import { jsonSchemaTransform } from "fastify-type-provider-zod";

type Transform = typeof jsonSchemaTransform;
type Content = Record<string, { schema: unknown }>;

function contentOf(body: unknown): Content | undefined {
  if (typeof body !== "object" || body === null || !("content" in body)) return undefined;
  return (body as { content: Content }).content;
}

/**
 * jsonSchemaTransform, plus request bodies given per content type (JSON and binary
 * submits): each media type's zod schema is converted on its own, as the library does
 * for responses.
 */
const transform: Transform = (doc) => {
  const content = contentOf(doc.schema?.body);
  if (!content) return jsonSchemaTransform(doc);
  const out = jsonSchemaTransform({ ...doc, schema: { ...doc.schema, body: undefined } });
  const media: Content = {};
  for (const [type, { schema }] of Object.entries(content)) {
    const one = jsonSchemaTransform({ ...doc, schema: { body: schema } }) as { schema: { body: unknown } };
    media[type] = { schema: one.schema.body };
  }
  return { ...out, schema: { ...(out.schema as object), body: { content: media } } };
};

/** OpenAPI generated from the same zod schemas the routes validate with. */
export async function registerOpenApi(app: FastifyInstance): Promise<void> {
  await app.register(swagger, {
    openapi: {
      info: {
        title: "Citadel producer API",
        version: "1.0.0",
        description: "Queue-driven batch inference with sealed models.",
      },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
      security: [{ bearer: [] }],
    },
    transform,
    hideUntagged: true,
  });
  await app.register(swaggerUi, { routePrefix: "/docs" });
  app.get("/openapi.json", { schema: { hide: true } }, async () => app.swagger());
}
