import { z } from "zod";
import { type CitadelError, type ErrorCode, httpStatusFor } from "./errors.js";
import { KServeDatatype } from "./kserve.js";
import { LIMITS } from "./tensor.js";

/**
 * The Open Inference Protocol (KServe v2) over HTTP, as Citadel serves it under /v2
 * (kserve/open-inference-protocol, specification/protocol/inference_rest.md, with the
 * binary tensor data extension). Field names are the protocol's, snake_case included.
 * Unknown fields are refused, as in Citadel's own bodies; `parameters` is the protocol's
 * open bag: keys Citadel does not use (a client's `content_type`, `priority`, …) are
 * taken and ignored, as Triton and KServe servers do.
 */

const TensorName = z.string().min(1).max(256);

/** A parameter Citadel does not read: a primitive value, kept to a bound. */
const OtherParameter = z.union([z.string().max(1024), z.number(), z.boolean()]);
/** A `parameters` object: the keys Citadel reads, and at most 32 others, ignored. */
function parameters<T extends z.ZodRawShape>(known: T) {
  return z
    .object(known)
    .catchall(OtherParameter)
    .refine((p) => Object.keys(p).length <= 32, { message: "at most 32 parameters" })
    .nullish();
}
const Shape = z.array(z.number().int().min(0).max(LIMITS.maxDim)).max(LIMITS.maxRank);

/** One input of an infer request: `data` in the JSON (flat or nested, row-major), or its bytes after a binary header. */
export const V2RequestInput = z.strictObject({
  name: TensorName,
  shape: Shape,
  datatype: KServeDatatype,
  /** `binary_data_size`: the input's bytes follow the JSON header (binary tensor data extension). */
  parameters: parameters({ binary_data_size: z.number().int().min(0).optional() }),
  /** Numbers (booleans for BOOL), flat or nested to mirror `shape`; checked element by element against the manifest. */
  data: z.array(z.unknown()).optional(),
});
export type V2RequestInput = z.infer<typeof V2RequestInput>;

/** An output asked for; `binary_data: true` returns it as bytes after the answer's JSON header. */
export const V2RequestOutput = z.strictObject({
  name: TensorName,
  parameters: parameters({ binary_data: z.boolean().optional() }),
});
export type V2RequestOutput = z.infer<typeof V2RequestOutput>;

/** POST /v2/models/{name}[/versions/{v}]/infer: the JSON body, or the JSON header of a binary body. */
export const V2InferRequest = z.strictObject({
  /** Echoed in the answer. */
  id: z.string().max(256).optional(),
  /** What KServe's client sends beside the path: must name the path's model (and version, when both do). */
  model_name: TensorName.optional(),
  model_version: z.string().min(1).max(64).optional(),
  /** `binary_data_output: true` returns every output as bytes unless an output says otherwise. */
  parameters: parameters({ binary_data_output: z.boolean().optional() }),
  inputs: z.array(V2RequestInput).min(1).max(LIMITS.maxInputsPerJob),
  /** The outputs wanted (default: every output the model's output policy allows). */
  outputs: z.array(V2RequestOutput).max(32).optional(),
});
export type V2InferRequest = z.infer<typeof V2InferRequest>;

/** One output of an answer: `data` in the JSON, or `parameters.binary_data_size` bytes after a binary header. */
export const V2ResponseOutput = z.object({
  name: z.string(),
  datatype: KServeDatatype,
  shape: z.array(z.number().int()),
  parameters: z.object({ binary_data_size: z.number().int() }).optional(),
  data: z.array(z.unknown()).optional(),
});
export type V2ResponseOutput = z.infer<typeof V2ResponseOutput>;

export const V2InferResponse = z.object({
  model_name: z.string(),
  model_version: z.string(),
  /** The request's `id`, or the job's id when the request gave none. */
  id: z.string(),
  /** `job_id`: the Citadel job that ran (GET /v1/jobs/{id} reads it while its result lasts). */
  parameters: z.object({ job_id: z.string() }),
  outputs: z.array(V2ResponseOutput),
});
export type V2InferResponse = z.infer<typeof V2InferResponse>;

/** A tensor in model metadata: -1 for a dimension of any size (the batch axis, dynamic dimensions). */
export const V2MetadataTensor = z.object({
  name: z.string(),
  datatype: KServeDatatype,
  shape: z.array(z.number().int().min(-1)),
});
export type V2MetadataTensor = z.infer<typeof V2MetadataTensor>;

export const V2ModelMetadata = z.object({
  name: z.string(),
  /** The versions a request may name: stable, and the canary when one is routed. */
  versions: z.array(z.string()),
  platform: z.string(),
  inputs: z.array(V2MetadataTensor),
  outputs: z.array(V2MetadataTensor),
});
export type V2ModelMetadata = z.infer<typeof V2ModelMetadata>;

export const V2ServerMetadata = z.object({
  name: z.string(),
  version: z.string(),
  extensions: z.array(z.string()),
});
export type V2ServerMetadata = z.infer<typeof V2ServerMetadata>;

/** The protocol's error object: one string. Citadel's stable code leads it ("TENSOR_SHAPE_MISMATCH: …"), so it stays greppable. */
export const V2ErrorBody = z.object({ error: z.string() });
export type V2ErrorBody = z.infer<typeof V2ErrorBody>;

export function v2ErrorBody(e: Pick<CitadelError, "code" | "message">): V2ErrorBody {
  return { error: `${e.code}: ${e.message}` };
}

/**
 * The status a code answers with under /v2: Citadel's own (httpStatusFor), except that
 * input the manifest refuses (422 under /v1) is the protocol's 400 "bad request".
 */
export function v2StatusFor(code: ErrorCode): number {
  const status = httpStatusFor(code);
  return status === 422 ? 400 : status;
}
