import { z } from "zod";
import { CustomId, JobMetadata, JobView, Priority } from "./jobs.js";
import { ModelName, ModelVersion } from "./manifest.js";
import { LIMITS } from "./tensor.js";

/**
 * The JSON headers of the Open Inference Protocol (KServe v2) binary tensor data
 * extension, as Citadel's job routes accept them: the body is `Inference-Header-Content-Length`
 * bytes of this JSON, then each input's raw little-endian bytes in the order listed.
 */

/**
 * KServe v2 datatypes Citadel serves, each mapping to one Citadel dtype (the table is
 * KSERVE_TO_DTYPE in packages/tensors/src/kserve.ts); BYTES and 32/64-bit unsigned do not.
 */
export const KServeDatatype = z.enum([
  "BOOL",
  "UINT8",
  "INT8",
  "UINT16",
  "INT16",
  "INT32",
  "INT64",
  "FP16",
  "BF16",
  "FP32",
  "FP64",
]);
export type KServeDatatype = z.infer<typeof KServeDatatype>;

/** One input sent as binary data: its bytes follow the header, `binary_data_size` of them. */
export const BinaryInputHeader = z.strictObject({
  name: z.string().min(1).max(256),
  datatype: KServeDatatype,
  shape: z.array(z.number().int().min(0).max(LIMITS.maxDim)).max(LIMITS.maxRank),
  parameters: z.strictObject({ binary_data_size: z.number().int().min(0) }),
});
export type BinaryInputHeader = z.infer<typeof BinaryInputHeader>;

/** One output in a binary answer: its bytes follow the header, in the order listed. */
export const BinaryOutputHeader = BinaryInputHeader;
export type BinaryOutputHeader = BinaryInputHeader;

/** The header of a binary POST /v1/jobs: the JSON job request, with KServe-style inputs. Unknown fields are refused. */
export const BinaryJobHeader = z.strictObject({
  model: ModelName,
  version: ModelVersion.optional(),
  timeoutMs: z.number().int().min(1).optional(),
  priority: Priority.default("normal"),
  custom_id: CustomId.optional(),
  metadata: JobMetadata.optional(),
  inputs: z.array(BinaryInputHeader).max(LIMITS.maxInputsPerJob),
  outputs: z
    .array(z.strictObject({ name: z.string().min(1).max(256) }))
    .max(32)
    .optional(),
  /** `binary_data_output: true` asks for the result of POST ?wait=ms as a binary body (GET asks with its Accept header). */
  parameters: z.strictObject({ binary_data_output: z.boolean().optional() }).optional(),
});
export type BinaryJobHeader = z.infer<typeof BinaryJobHeader>;

/** The header of a binary POST /v1/jobs/bulk: the bytes of job 0's inputs come first, then job 1's, and so on. */
export const BinaryBulkHeader = z.strictObject({ jobs: z.array(BinaryJobHeader).min(1) });
export type BinaryBulkHeader = z.infer<typeof BinaryBulkHeader>;

/**
 * The header of a binary answer (a completed job's view asked for as bytes): the job
 * view, with `result.outputs` as the descriptors of the bytes that follow, in order.
 */
export const BinaryViewHeader = JobView.extend({
  result: JobView.shape.result
    .unwrap()
    .extend({ outputs: z.array(BinaryOutputHeader) })
    .optional(),
});
export type BinaryViewHeader = z.infer<typeof BinaryViewHeader>;

export const BINARY_CONTENT_TYPE = "application/octet-stream";
export const INFERENCE_HEADER_LENGTH = "inference-header-content-length";
