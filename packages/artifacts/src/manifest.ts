import type { ManifestBody, SignedManifest } from "@citadel/contracts";
import type { KeyProvider, ManifestSigner } from "@citadel/keys";
import { sealArtifact } from "./seal.js";
import { signManifest } from "./signing.js";

/** Everything in a manifest except what sealing computes. */
export type ModelDescription = Omit<ManifestBody, "schema" | "artifact" | "createdAt">;

export interface SealedModel {
  signed: SignedManifest;
  /** ciphertext || tag: the only form model bytes take outside a worker's memory */
  artifact: Buffer;
}

/** Seals model bytes and signs the manifest that binds them. */
export async function sealModel(
  modelBytes: Uint8Array,
  description: ModelDescription,
  keys: KeyProvider,
  keyName: string,
  signer: ManifestSigner,
): Promise<SealedModel> {
  const { artifact, ref } = await sealArtifact(modelBytes, description, keys, keyName);
  const body: ManifestBody = {
    schema: "citadel.manifest/v1",
    ...description,
    artifact: ref,
    createdAt: new Date().toISOString(),
  };
  return { signed: await signManifest(body, signer), artifact };
}
