import { CitadelError, ManifestBody, type SignedManifest } from "@citadel/contracts";
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
  // Nothing is signed that a worker's verification would refuse.
  const checked = ManifestBody.safeParse(body);
  if (!checked.success) {
    const issue = checked.error.issues[0];
    throw new CitadelError(
      "MANIFEST_INVALID",
      `manifest fails the schema: ${issue?.path.join(".")}: ${issue?.message}`,
    );
  }
  return { signed: await signManifest(body, signer), artifact };
}
