import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { openArtifact, type SealedModel, sealModel, sha256, verifyManifest } from "@citadel/artifacts";
import { CitadelError, type ManifestBody, SignedManifest, type TrustedSigner } from "@citadel/contracts";
import { type IoSpec, wrapEngineAsEpContext } from "@citadel/onnx";
import type { CliContext } from "./context.js";
import { describeIo, type IoDescription, inspectWithOrt, SealSpec, type SealSpecInput } from "./describe.js";
import { assertNotRetired } from "./retire.js";

export interface SealRequest {
  name: string;
  version: string;
  spec: SealSpecInput;
  /** For a raw TensorRT engine: its I/O, since onnxruntime cannot read it without a GPU. */
  engineIo?: { inputs: IoSpec[]; outputs: IoSpec[] };
}

/**
 * Seals model bytes held in memory: derives the I/O spec from the model (or the
 * engine's declared I/O), encrypts under a fresh data key and signs the manifest.
 * A raw `.engine` is first wrapped as an ONNX EPContext model (embed_mode=1).
 */
export async function sealBytes(ctx: CliContext, bytes: Uint8Array, req: SealRequest): Promise<SealedModel> {
  const spec = SealSpec.parse(req.spec);
  const keys = await ctx.keys();
  let model = bytes;
  let io: { inputs: IoDescription[]; outputs: IoDescription[] };
  let format: ManifestBody["format"] = "onnx";
  if (req.engineIo) {
    if (!spec.tensorrt)
      throw new CitadelError(
        "MANIFEST_INVALID",
        "a TensorRT engine needs spec.tensorrt (gpuArch and min/opt/max batch)",
      );
    const t = spec.tensorrt;
    if (t.minBatch > 1 || t.maxBatch < spec.maxBatch || t.optBatch < t.minBatch || t.optBatch > t.maxBatch) {
      throw new CitadelError(
        "MANIFEST_INVALID",
        `engine profile ${t.minBatch}/${t.optBatch}/${t.maxBatch} does not cover batch 1..${spec.maxBatch}`,
      );
    }
    model = wrapEngineAsEpContext(bytes, req.engineIo, { hardwareArchitecture: t.gpuArch });
    io = {
      inputs: req.engineIo.inputs.map((i) => ({ name: i.name, type: i.dtype, shape: i.shape })),
      outputs: req.engineIo.outputs.map((o) => ({ name: o.name, type: o.dtype, shape: o.shape })),
    };
    format = "tensorrt-epcontext";
  } else {
    io = await inspectWithOrt(bytes);
  }
  const shape = describeIo(io.inputs, io.outputs, spec);
  try {
    return await sealModel(
      model,
      {
        name: req.name,
        version: req.version,
        format,
        ...shape,
        maxQueueDelayMs: spec.maxQueueDelayMs,
        timeoutMs: spec.timeoutMs,
        executionProviders: format === "tensorrt-epcontext" ? ["tensorrt"] : spec.executionProviders,
        ...(spec.tensorrt ? { tensorrt: spec.tensorrt } : {}),
        outputPolicy: spec.outputPolicy,
      },
      keys,
      ctx.env.VAULT_MODEL_KEY,
      keys,
    );
  } finally {
    if (model !== bytes) model.fill(0);
  }
}

export async function writeSealed(dir: string, s: SealedModel): Promise<{ manifest: string; artifact: string }> {
  await mkdir(dir, { recursive: true });
  const base = path.join(dir, `${s.signed.manifest.name}-${s.signed.manifest.version}`);
  await writeFile(`${base}.manifest.json`, `${JSON.stringify(s.signed, null, 2)}\n`);
  await writeFile(`${base}.sealed`, s.artifact, { mode: 0o640 });
  return { manifest: `${base}.manifest.json`, artifact: `${base}.sealed` };
}

export async function readSealed(manifestFile: string): Promise<SealedModel> {
  const signed = SignedManifest.parse(JSON.parse(await readFile(manifestFile, "utf8")));
  const artifact = await readFile(manifestFile.replace(/\.manifest\.json$/, ".sealed"));
  return { signed, artifact };
}

/** Puts the artifact in the store and the manifest in the registry, then sets routing. */
export async function publishSealed(
  ctx: CliContext,
  s: SealedModel,
  routing: { stable?: boolean; canaryWeight?: number },
) {
  const { name, version } = s.signed.manifest;
  if (sha256(s.artifact) !== s.signed.manifest.artifact.ciphertextSha256) {
    throw new CitadelError("ARTIFACT_HASH_MISMATCH", "artifact does not match its manifest; refusing to publish");
  }
  await assertNotRetired(ctx, name, [version]);
  await ctx.store.put(name, version, s.artifact);
  return ctx.registry.publish(s.signed, routing);
}

/**
 * Verifies a published version end to end — signature against the trusted keys,
 * hashes, key unwrap and decryption — in memory, wiping the plaintext after.
 */
export async function verifyPublished(
  ctx: CliContext,
  name: string,
  version: string,
  trusted: readonly TrustedSigner[],
) {
  const raw = await ctx.registry.getManifest(name, version);
  if (raw === null) throw new CitadelError("MODEL_NOT_FOUND", `${name}@${version} is not published`);
  const manifest = verifyManifest(raw, trusted, { name, version });
  const artifact = await ctx.store.get(name, version);
  const plaintext = await openArtifact(manifest, artifact, await ctx.keys());
  const bytes = plaintext.length;
  plaintext.fill(0);
  return { manifest, plaintextBytes: bytes };
}
