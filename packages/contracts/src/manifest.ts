import { z } from "zod";
import { TensorSpec } from "./tensor.js";

export const ModelName = z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, "lowercase letters, digits and '-', at most 63");
export const ModelVersion = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$/, "letters, digits, '.', '_' or '-', at most 32");

export const ExecutionProvider = z.enum(["tensorrt", "cuda", "cpu"]);
export type ExecutionProvider = z.infer<typeof ExecutionProvider>;

/** What a result may reveal: limits extraction by probing (threat 4). */
export const OutputPolicy = z.strictObject({
  /** Only these outputs may ever be returned (default: all). */
  allowedOutputs: z.array(z.string()).optional(),
  /** Keep the k largest values along the last axis (values and indices returned). */
  topK: z.number().int().min(1).max(1000).optional(),
  /** Round every float to this many decimals. */
  decimals: z.number().int().min(0).max(8).optional(),
  /** Return only the argmax along the last axis. */
  labelOnly: z.boolean().optional(),
});
export type OutputPolicy = z.infer<typeof OutputPolicy>;

/** The min/opt/max batch a TensorRT engine was built for; must cover [1, maxBatch]. */
export const TensorRtProfile = z.strictObject({
  gpuArch: z.string().min(1),
  minBatch: z.number().int().min(1),
  optBatch: z.number().int().min(1),
  maxBatch: z.number().int().min(1),
});
export type TensorRtProfile = z.infer<typeof TensorRtProfile>;

export const Base64 = z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/, "base64");
export const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, "sha-256 hex");

export const ArtifactRef = z.strictObject({
  /** AES-256-GCM, 96-bit IV, 128-bit tag appended to the ciphertext. */
  cipher: z.literal("aes-256-gcm"),
  iv: Base64,
  ciphertextSha256: Sha256Hex,
  plaintextSha256: Sha256Hex,
  ciphertextBytes: z.number().int().min(17),
  /** The data key wrapped by the key service: `vault:vN:…` (Transit) or `local:vN:…`. */
  wrappedKey: z.string().regex(/^(vault|local):v\d+:[A-Za-z0-9+/=]+$/),
  keyProvider: z.enum(["vault", "local"]),
  keyName: z.string().min(1).max(128),
});
export type ArtifactRef = z.infer<typeof ArtifactRef>;

export const ManifestBody = z
  .strictObject({
    schema: z.literal("citadel.manifest/v1"),
    name: ModelName,
    version: ModelVersion,
    format: z.enum(["onnx", "tensorrt-epcontext"]),
    inputs: z.array(TensorSpec).min(1).max(32),
    outputs: z.array(TensorSpec).min(1).max(32),
    /** Max samples per job and per batch of jobs (sum of their batch sizes); 1 with no batch axis. */
    maxBatch: z.number().int().min(1).max(4096),
    /**
     * Max samples per onnxruntime run, when the runner is faster per sample at a smaller
     * batch than `maxBatch` (as CPUs often are: cache): a larger batch (one job or
     * several) runs as several runs of at most this size. Absent: `maxBatch`.
     */
    runBatch: z.number().int().min(1).max(4096).optional(),
    /** How long a worker may hold the first job of a batch waiting for more. */
    maxQueueDelayMs: z.number().int().min(0).max(1000),
    /** Default and ceiling for a job's execution timeout. */
    timeoutMs: z.number().int().min(1).max(600_000),
    executionProviders: z.array(ExecutionProvider).min(1),
    tensorrt: TensorRtProfile.optional(),
    outputPolicy: OutputPolicy,
    artifact: ArtifactRef,
    createdAt: z.string(),
  })
  .refine((m) => m.runBatch === undefined || m.runBatch <= m.maxBatch, {
    message: "runBatch must not exceed maxBatch",
    path: ["runBatch"],
  });
export type ManifestBody = z.infer<typeof ManifestBody>;

export const ManifestSignature = z.strictObject({
  alg: z.literal("ed25519"),
  keyId: z.string().min(1).max(256),
  value: Base64,
});
export type ManifestSignature = z.infer<typeof ManifestSignature>;

/** What the registry stores: the manifest and its detached signature over canonical JSON. */
export const SignedManifest = z.strictObject({
  manifest: ManifestBody,
  signature: ManifestSignature.optional(),
});
export type SignedManifest = z.infer<typeof SignedManifest>;

/**
 * A signed statement that a version must never be served again (its output policy was
 * too loose, it leaked, it is broken). Signed with the manifest signer over canonical
 * JSON; `schema` keeps a retirement's signature from ever verifying as a manifest's.
 */
export const RetirementBody = z.strictObject({
  schema: z.literal("citadel.retirement/v1"),
  name: ModelName,
  version: ModelVersion,
  retiredAt: z.string(),
  reason: z.string().min(1).max(500).optional(),
});
export type RetirementBody = z.infer<typeof RetirementBody>;

/** What the registry stores for a retired version. */
export const SignedRetirement = z.strictObject({
  retirement: RetirementBody,
  signature: ManifestSignature,
});
export type SignedRetirement = z.infer<typeof SignedRetirement>;

/** Routing for a model: a stable version and an optional canary with a weight in [0,1]. */
export const ModelRouting = z.strictObject({
  stable: ModelVersion,
  canary: ModelVersion.optional(),
  canaryWeight: z.number().min(0).max(1).default(0),
});
export type ModelRouting = z.infer<typeof ModelRouting>;

/** Public keys the workers trust, pinned in config. */
export const TrustedSigner = z.strictObject({
  keyId: z.string().min(1),
  /** Raw 32-byte ed25519 public key, base64 (what Vault Transit returns). */
  publicKey: Base64,
});
export type TrustedSigner = z.infer<typeof TrustedSigner>;
