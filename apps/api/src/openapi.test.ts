import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { openApiDocument } from "./openapi-document.js";
import { finishDocument, type OpenApiDocument } from "./openapi-finish.js";

const committed = JSON.parse(
  readFileSync(new URL("../../../docs/openapi.json", import.meta.url), "utf8"),
) as OpenApiDocument;

// The document is generated once for the file: building the app is the slow part.
const generated = await openApiDocument();

interface Operation {
  operationId?: string;
  security?: unknown[];
  parameters?: { in: string; name: string; required?: boolean; schema?: unknown }[];
  requestBody?: { content: Record<string, { schema: Record<string, unknown> }> };
  responses: Record<string, { description?: string; headers?: Record<string, unknown>; content?: unknown }>;
}

const operations = (doc: OpenApiDocument) =>
  Object.entries(doc.paths ?? {}).flatMap(([path, ops]) =>
    Object.entries(ops).map(([method, op]) => ({ path, method, op: op as unknown as Operation })),
  );

/** Every `$ref` in the document, resolved against it; throws on one that points nowhere. */
function resolveAll(doc: unknown, node: unknown = doc): number {
  if (Array.isArray(node)) return node.reduce((n: number, v) => n + resolveAll(doc, v), 0);
  if (typeof node !== "object" || node === null) return 0;
  let n = 0;
  for (const [k, v] of Object.entries(node)) {
    if (k === "$ref") {
      const target = (v as string)
        .replace(/^#\//, "")
        .split("/")
        .reduce<unknown>((at, key) => (at as Record<string, unknown> | undefined)?.[key], doc);
      if (target === undefined) throw new Error(`dangling $ref ${String(v)}`);
      n++;
    } else n += resolveAll(doc, v);
  }
  return n;
}

describe("docs/openapi.json", () => {
  it("is what the API generates with its default settings (run `pnpm openapi` after changing a route)", () => {
    expect(committed).toEqual(generated);
  });
});

describe("the generated OpenAPI document", () => {
  const ops = operations(generated);

  it("is OpenAPI 3.0 whose every $ref resolves", () => {
    expect(generated.openapi).toBe("3.0.3");
    expect(resolveAll(generated)).toBeGreaterThan(50);
  });

  it("names every operation once, and declares each path parameter of its path, required", () => {
    const ids = ops.map((o) => o.op.operationId);
    expect(ids.every((id) => typeof id === "string")).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
    for (const { path, op } of ops) {
      const inPath = [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]);
      const declared = (op.parameters ?? []).filter((p) => p.in === "path");
      expect(declared.map((p) => p.name).sort(), path).toEqual([...inPath].sort());
      expect(declared.every((p) => p.required === true)).toBe(true);
    }
  });

  it("gives every response a description and a schema, and every authenticated route its errors", () => {
    for (const { path, method, op } of ops) {
      for (const [status, r] of Object.entries(op.responses)) {
        expect(r.description, `${method} ${path} ${status}`).toMatch(/\w/);
        expect(r.description).not.toBe("Default Response");
        expect(r.content, `${method} ${path} ${status}`).toBeDefined();
      }
      if (op.security?.length === 0) continue;
      expect(Object.keys(op.responses), `${method} ${path}`).toEqual(expect.arrayContaining(["401", "429", "503"]));
    }
  });

  it("sends Retry-After with every 429 and 503 refusal", () => {
    for (const { op } of ops) {
      for (const status of ["429", "503"]) {
        const r = op.responses[status];
        if (!r || op.security?.length === 0) continue;
        expect(r.headers?.["Retry-After"]).toEqual({ $ref: "#/components/headers/Retry-After" });
      }
    }
  });

  it("takes an Idempotency-Key on the submits, and types the bulk items and their answers", () => {
    const byId = new Map(ops.map((o) => [o.op.operationId, o.op]));
    for (const id of ["submitJob", "submitJobs", "v2ModelInfer", "v2ModelVersionInfer"]) {
      expect(byId.get(id)?.parameters?.map((p) => `${p.in}:${p.name}`)).toContain("header:idempotency-key");
    }
    const bulk = byId.get("submitJobs");
    expect(bulk?.requestBody?.content["application/json"]?.schema).toEqual({
      $ref: "#/components/schemas/BulkRequest",
    });
    const schemas = generated.components?.schemas as Record<string, Record<string, Loose>>;
    expect(schemas.BulkRequest?.properties.jobs.items).toEqual({ $ref: "#/components/schemas/JobRequest" });
    expect(schemas.BulkResponse?.properties.jobs.items.anyOf).toEqual([
      { $ref: "#/components/schemas/BulkAcceptedItem" },
      { $ref: "#/components/schemas/BulkRefusedItem" },
    ]);
    // POST /v1/jobs?wait: 200 with the view (JSON or bytes), 202 when not final in time.
    const submit = byId.get("submitJob");
    expect(Object.keys(submit?.responses ?? {})).toEqual(expect.arrayContaining(["200", "202", "409", "413", "422"]));
    expect(Object.keys((submit?.responses["200"]?.content as object) ?? {}).sort()).toEqual([
      "application/json",
      "application/octet-stream",
    ]);
  });

  it("documents completion webhooks as callbacks of the submits that may name a target, signed headers and body typed", () => {
    const byId = new Map(ops.map((o) => [o.op.operationId, o.op as Operation & { callbacks?: Loose }]));
    for (const [id, url] of [
      ["submitJob", "{$request.body#/callback}"],
      ["createBatch", "{$request.query.callback}"],
    ] as const) {
      const post = byId.get(id)?.callbacks?.completion?.[url]?.post;
      expect(post, id).toBeDefined();
      expect(post.parameters.map((p: Loose) => `${p.in}:${p.name}:${String(p.required)}`)).toEqual([
        "header:webhook-id:true",
        "header:webhook-timestamp:true",
        "header:webhook-signature:true",
      ]);
      expect(post.requestBody.content["application/json"].schema).toEqual({
        $ref: "#/components/schemas/WebhookEvent",
      });
    }
    // The event: its type, and the job's view without its result, or the batch's view.
    const event = ((generated.components?.schemas ?? {}) as Record<string, Loose>).WebhookEvent;
    expect(event.properties.type.enum).toEqual([
      "job.completed",
      "job.failed",
      "job.cancelled",
      "batch.completed",
      "batch.cancelled",
    ]);
    const [job, batch] = event.properties.data.anyOf;
    expect(job.properties.result).toBeUndefined();
    expect(job.properties.object.enum ?? [job.properties.object.const]).toEqual(["job"]);
    expect(batch).toEqual({ $ref: "#/components/schemas/BatchView" });
  });

  it("names a request schema without `Input` unless its response form differs", () => {
    const schemas = generated.components?.schemas ?? {};
    const names = Object.keys(schemas);
    expect(names).toEqual(expect.arrayContaining(["JobRequest", "JobView", "BatchLine", "V2InferRequest"]));
    // The library's request form of a component is `<id>Input`; one is left only beside a different `<id>`.
    for (const name of names.filter((n) => n.endsWith("Input"))) {
      const twin = schemas[name.slice(0, -"Input".length)];
      if (twin !== undefined) expect(twin, name).not.toEqual(schemas[name]);
    }
    expect(names.filter((n) => n.endsWith("InputInput"))).toEqual([]);
  });
});

// biome-ignore lint/suspicious/noExplicitAny: JSON Schema read field by field; a missing field fails its assertion
type Loose = any;

describe("finishDocument", () => {
  const ref = (n: string) => ({ $ref: `#/components/schemas/${n}` });
  const doc = (schemas: Record<string, unknown>, body: unknown): OpenApiDocument => ({
    openapi: "3.0.3",
    paths: { "/x": { post: { responses: { "200": { content: { "application/json": { schema: body } } } } } } },
    components: { schemas },
  });

  it("drops unused schemas and keeps `<id>Input` apart from a different `<id>`", () => {
    const out = finishDocument(
      doc(
        { AInput: { type: "string" }, A: { type: "number" }, B: { type: "object" }, Unused: {} },
        {
          anyOf: [ref("AInput"), ref("A"), ref("B")],
        },
      ),
    );
    expect(Object.keys(out.components?.schemas ?? {})).toEqual(["A", "AInput", "B"]);
  });

  it("renames `<id>Input` to `<id>` when that is unused or the same, refs included", () => {
    const out = finishDocument(
      doc({ AInput: { items: ref("BInput") }, BInput: { type: "string" }, B: { type: "string" } }, ref("AInput")),
    );
    expect(out.components?.schemas).toEqual({ A: { items: ref("B") }, B: { type: "string" } });
    expect(JSON.stringify(out.paths)).toContain("#/components/schemas/A");
  });

  it("refuses a $ref to a schema that is not a component", () => {
    expect(() => finishDocument(doc({}, ref("Nowhere")))).toThrow(/Nowhere/);
  });
});
