import { z } from "zod";

/**
 * float16 (IEEE 754 binary16) and bfloat16 are held as their raw 16-bit patterns
 * (packages/tensors/src/half.ts converts them to and from numbers).
 */
export const DType = z.enum([
  "float32",
  "float64",
  "float16",
  "bfloat16",
  "int8",
  "uint8",
  "int16",
  "uint16",
  "int32",
  "int64",
  "bool",
]);
export type DType = z.infer<typeof DType>;

/** The dtypes whose values are floating point: NaN/Inf are refused in each. */
export const FLOAT_DTYPES: ReadonlySet<DType> = new Set(["float32", "float64", "float16", "bfloat16"]);

/** Bytes per element of each dtype (bool is one byte, as onnxruntime stores it). */
export const DTYPE_BYTES: Record<DType, number> = {
  float32: 4,
  float64: 8,
  float16: 2,
  bfloat16: 2,
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

export const TensorSpec = z
  .strictObject({
    name: z.string().min(1).max(256),
    /** What clients send (inputs) or receive (outputs). */
    dtype: DType,
    /**
     * The dtype the model's graph takes, when it differs from `dtype`: only a bfloat16
     * input fed to a float32 model input (widened exactly, bits << 16, in the worker),
     * since onnxruntime-node has no bfloat16 tensors (docs/contract.md#jobs).
     */
    modelDtype: z.literal("float32").optional(),
    shape: z.array(Dim).max(LIMITS.maxRank),
    /** Index of the batch axis in `shape`, or null when this tensor has none. */
    batchAxis: z.number().int().min(0).nullable(),
    /** Inclusive bounds every value must respect; NaN/Inf are refused regardless. */
    range: z.tuple([z.number(), z.number()]).optional(),
    /** Upper bound on each dynamic non-batch dimension. */
    maxDim: z.number().int().min(1).max(LIMITS.maxDim).optional(),
  })
  .refine((s) => s.modelDtype === undefined || s.dtype === "bfloat16", {
    message: "modelDtype is only for a bfloat16 tensor fed to a float32 model input",
    path: ["modelDtype"],
  });
export type TensorSpec = z.infer<typeof TensorSpec>;
