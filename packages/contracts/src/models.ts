import { z } from "zod";
import { ManifestBody, ModelVersion, OutputPolicy } from "./manifest.js";
import { TensorSpec } from "./tensor.js";

/** One served version of a model, as GET /v1/models lists it: its signed manifest's I/O and limits. */
export const ModelVersionInfo = z.object({
  version: ModelVersion,
  format: ManifestBody.shape.format,
  inputs: z.array(TensorSpec),
  outputs: z.array(TensorSpec),
  maxBatch: z.number().int(),
  timeoutMs: z.number().int(),
  /** The manifest's output policy with the tenant's own for this model laid over it. */
  outputPolicy: OutputPolicy,
});
export type ModelVersionInfo = z.infer<typeof ModelVersionInfo>;

export const ModelInfo = z.object({
  name: z.string(),
  stable: z.string(),
  canary: z.string().optional(),
  canaryWeight: z.number(),
  versions: z.array(ModelVersionInfo),
});
export type ModelInfo = z.infer<typeof ModelInfo>;

/** GET /v1/models: the models this tenant may use. */
export const ModelList = z.object({ models: z.array(ModelInfo) });
export type ModelList = z.infer<typeof ModelList>;
