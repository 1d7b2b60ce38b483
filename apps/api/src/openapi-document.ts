import { parseEnv } from "@citadel/config";
import { createLogger } from "@citadel/telemetry";
import { type AppDeps, buildApp } from "./app.js";
import { ApiEnv } from "./env.js";
import type { OpenApiDocument } from "./openapi-finish.js";
import { appSettings } from "./settings.js";

/**
 * A service the document never calls: building the app only registers routes and
 * their schemas, so any use of one is a fault, reported by name.
 */
function notWhileDocumenting(service: string): never {
  return new Proxy(
    {},
    {
      get(_target, prop) {
        throw new Error(`${service}.${String(prop)} was used while generating the OpenAPI document`);
      },
    },
  ) as never;
}

/**
 * The OpenAPI document the API serves at /openapi.json, generated without Redis: the
 * app is built (routes, schemas, the document's own passes) with the settings of `env`
 * (the defaults unless given) and no services. docs/openapi.json is this with the defaults.
 */
export async function openApiDocument(env: ApiEnv = parseEnv(ApiEnv, {})): Promise<OpenApiDocument> {
  const deps = Object.fromEntries(
    (
      [
        "redis",
        "queues",
        "catalog",
        "tenants",
        "submitter",
        "batches",
        "batchStore",
        "limiter",
        "audit",
        "denials",
        "metrics",
      ] as const
    ).map((name) => [name, notWhileDocumenting(name)]),
  );
  const app = await buildApp({
    ...(deps as unknown as Omit<AppDeps, "log" | "settings">),
    log: createLogger({ name: "citadel-openapi", level: "silent" }),
    settings: { ...appSettings(env), openApiUi: true },
  });
  try {
    await app.ready();
    return app.swagger() as unknown as OpenApiDocument;
  } finally {
    await app.close();
  }
}
