import { z } from "zod";

export const DType = z.enum(["float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "int64", "bool"]);
export type DType = z.infer<typeof DType>;

/** Bytes per element of each dtype (bool is one byte, as onnxruntime stores it). */
export const DTYPE_BYTES: Record<DType, number> = {
  float32: 4,
  float64: 8,
  int8: 1,
  uint8: 1,
  int16: 2,
  uint16: 2,
  int32: 4,
  int64: 8,
  bool: 1,
};

/** Hard ceilings no manifest can raise: they bound what one request can make us allocate. */
export const LIMITS = {
  maxRank: 8,
  maxDim: 1 << 20,
  maxElementsPerTensor: 64 * 1024 * 1024,
  maxInputsPerJob: 32,
} as const;

/**
 * A tensor on the wire: dtype, shape, and data as base64 (little-endian) or, for
 * small inputs, a flat JSON number array. int64 in a JSON array is limited to safe
 * integers; use base64 for the full range.
 */
export const TensorPayload = z.strictObject({
  dtype: DType,
  shape: z.array(z.number().int().min(0).max(LIMITS.maxDim)).max(LIMITS.maxRank),
  data: z.union([z.string(), z.array(z.union([z.number(), z.boolean()]))]),
});
export type TensorPayload = z.infer<typeof TensorPayload>;

/**
 * One dimension in a manifest: a fixed size, or null for a dynamic one (the batch
 * axis is always dynamic and bounded by the manifest's maxBatch).
 */
export const Dim = z.union([z.number().int().min(1), z.null()]);
export type Dim = z.infer<typeof Dim>;

export const TensorSpec = z.strictObject({
  name: z.string().min(1).max(256),
  dtype: DType,
  shape: z.array(Dim).max(LIMITS.maxRank),
  /** Index of the batch axis in `shape`, or null when this tensor has none. */
  batchAxis: z.number().int().min(0).nullable(),
  /** Inclusive bounds every value must respect; NaN/Inf are refused regardless. */
  range: z.tuple([z.number(), z.number()]).optional(),
  /** Upper bound on each dynamic non-batch dimension. */
  maxDim: z.number().int().min(1).max(LIMITS.maxDim).optional(),
});
export type TensorSpec = z.infer<typeof TensorSpec>;
