import {
  ApiErrorBody,
  BatchCounts,
  BatchLine,
  BatchResultLine,
  BatchStatus,
  BatchView,
  BinaryBulkHeader,
  BinaryInputHeader,
  BinaryJobHeader,
  BinaryViewHeader,
  BulkAcceptedItem,
  BulkRefusedItem,
  BulkRequest,
  BulkResponse,
  DType,
  EncodedTensor,
  ErrorCode,
  JobAccepted,
  JobCancelled,
  JobRequest,
  JobStatus,
  JobView,
  KServeDatatype,
  ModelInfo,
  ModelList,
  ModelVersionInfo,
  OutputPolicy,
  Priority,
  TensorPayload,
  TensorSpec,
  V2ErrorBody,
  V2InferRequest,
  V2InferResponse,
  V2MetadataTensor,
  V2ModelMetadata,
  V2RequestInput,
  V2RequestOutput,
  V2ResponseOutput,
  V2ServerMetadata,
  WebhookEvent,
} from "@citadel/contracts";
import { z } from "zod";

/**
 * What the OpenAPI document is made of besides the routes' own schemas: named
 * components for the contract's schemas (so generated clients get named types), the
 * error responses each route documents, and the few places where what a route
 * validates differs from what it documents.
 */

/**
 * Contract schemas documented as named components. Every route schema that contains
 * one refers to it by $ref (fastify-type-provider-zod reads ids from zod's global
 * registry); the document's own pass (openapi-finish.ts) drops the unused ones.
 */
const COMPONENTS: [z.ZodType, string][] = [
  [ApiErrorBody, "Error"],
  [ErrorCode, "ErrorCode"],
  [DType, "DType"],
  [Priority, "Priority"],
  [JobStatus, "JobStatus"],
  [TensorPayload, "TensorPayload"],
  [EncodedTensor, "EncodedTensor"],
  [JobRequest, "JobRequest"],
  [JobAccepted, "JobAccepted"],
  [JobView, "JobView"],
  [JobCancelled, "JobCancelled"],
  [BulkRequest, "BulkRequest"],
  [BulkAcceptedItem, "BulkAcceptedItem"],
  [BulkRefusedItem, "BulkRefusedItem"],
  [BulkResponse, "BulkResponse"],
  [TensorSpec, "TensorSpec"],
  [OutputPolicy, "OutputPolicy"],
  [ModelVersionInfo, "ModelVersionInfo"],
  [ModelInfo, "ModelInfo"],
  [ModelList, "ModelList"],
  [KServeDatatype, "KServeDatatype"],
  [BinaryInputHeader, "BinaryTensorHeader"],
  [BinaryJobHeader, "BinaryJobHeader"],
  [BinaryBulkHeader, "BinaryBulkHeader"],
  [BinaryViewHeader, "BinaryViewHeader"],
  [BatchLine, "BatchLine"],
  [BatchStatus, "BatchStatus"],
  [BatchCounts, "BatchCounts"],
  [BatchView, "BatchView"],
  [BatchResultLine, "BatchResultLine"],
  [V2RequestInput, "V2RequestInput"],
  [V2RequestOutput, "V2RequestOutput"],
  [V2InferRequest, "V2InferRequest"],
  [V2ResponseOutput, "V2ResponseOutput"],
  [V2InferResponse, "V2InferResponse"],
  [V2MetadataTensor, "V2MetadataTensor"],
  [V2ModelMetadata, "V2ModelMetadata"],
  [V2ServerMetadata, "V2ServerMetadata"],
  [V2ErrorBody, "V2Error"],
  [WebhookEvent, "WebhookEvent"],
];

/** Registers the components once per process (zod's global registry refuses an id twice). */
function registerComponents(): void {
  for (const [schema, id] of COMPONENTS) {
    if (z.globalRegistry.get(schema)?.id === id) continue;
    z.globalRegistry.add(schema, { ...z.globalRegistry.get(schema), id });
  }
}
registerComponents();

/**
 * A $ref to a component, for places the transform does not convert (the JSON header of
 * a binary body, a JSONL line). `io` picks the request or response form: the library
 * names a request form `<id>Input`; the finishing pass renames it when only one is used.
 */
export function componentRef(schema: z.ZodType, io: "input" | "output"): { $ref: string } {
  const id = z.globalRegistry.get(schema)?.id;
  if (!id) throw new Error("componentRef: the schema is not a registered component");
  return { $ref: `#/components/schemas/${io === "input" ? `${id}Input` : id}` };
}

const documented = new WeakMap<z.ZodType, z.ZodType>();

/**
 * A schema the route validates with, documented as another: the bulk route takes any
 * items and checks each one itself (one bad item is refused alone), while clients are
 * told each item is a job request.
 */
export function documentedAs<T extends z.ZodType>(validated: T, doc: z.ZodType): T {
  documented.set(validated, doc);
  return validated;
}

/** The schema to document for a route schema (itself unless documentedAs said otherwise). */
export function documentedSchema(schema: unknown): unknown {
  return schema instanceof z.ZodType ? (documented.get(schema) ?? schema) : schema;
}

/** A JSON response with its own description (the finishing pass gives the others a generic one). */
export function json<S extends z.ZodType>(schema: S, description: string) {
  return { description, content: { "application/json": { schema } } };
}

/** Error responses of a /v1 route: Citadel's envelope, `{"error":{code,message,details?}}`. */
export function v1Errors(...statuses: number[]): Record<number, typeof ApiErrorBody> {
  return Object.fromEntries(statuses.map((s) => [s, ApiErrorBody]));
}

/** Error responses of a /v2 route: the protocol's `{"error":"CODE: message"}`. */
export function v2Errors(...statuses: number[]): Record<number, typeof V2ErrorBody> {
  return Object.fromEntries(statuses.map((s) => [s, V2ErrorBody]));
}

/** The Idempotency-Key request header (submitContext checks it too, for routes without this schema). */
export const idempotencyHeader = {
  "idempotency-key": z
    .string()
    .min(1)
    .max(200)
    .optional()
    .describe(
      "Makes a submit safe to retry: the same key (per tenant, for 24 h) answers with the job it created " +
        "instead of creating another; a bulk's items use <key>#<index>. 409 when the key names another request.",
    ),
};
