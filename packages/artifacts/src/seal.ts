import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { type ArtifactRef, CitadelError, type ManifestBody } from "@citadel/contracts";
import type { KeyProvider } from "@citadel/keys";

const TAG_BYTES = 16;

export function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/**
 * Associated data for GCM: binds the ciphertext to the model's identity, so an
 * artifact decrypts only under the manifest it was sealed for.
 */
export function artifactAad(m: Pick<ManifestBody, "name" | "version" | "format">, plaintextSha256: string): Buffer {
  return Buffer.from(`citadel/v1|${m.name}|${m.version}|${m.format}|${plaintextSha256}`);
}

export interface SealResult {
  /** ciphertext || 16-byte GCM tag */
  artifact: Buffer;
  ref: ArtifactRef;
}

/**
 * Encrypts model bytes under a fresh data key from the key service. The plaintext
 * key is wiped before returning; the caller owns (and should wipe) `plaintext`.
 */
export async function sealArtifact(
  plaintext: Uint8Array,
  identity: Pick<ManifestBody, "name" | "version" | "format">,
  keys: KeyProvider,
  keyName: string,
): Promise<SealResult> {
  const plaintextSha256 = sha256(plaintext);
  const dk = await keys.generateDataKey(keyName);
  const iv = randomBytes(12);
  try {
    const c = createCipheriv("aes-256-gcm", dk.plaintext, iv);
    c.setAAD(artifactAad(identity, plaintextSha256));
    const artifact = Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
    return {
      artifact,
      ref: {
        cipher: "aes-256-gcm",
        iv: iv.toString("base64"),
        ciphertextSha256: sha256(artifact),
        plaintextSha256,
        ciphertextBytes: artifact.length,
        wrappedKey: dk.wrapped,
        keyProvider: keys.kind,
        keyName,
      },
    };
  } finally {
    dk.plaintext.fill(0);
  }
}

/**
 * Checks and decrypts an artifact in memory, in the order that spends nothing on a
 * bad one: length, ciphertext hash, key unwrap, GCM tag (with identity as AAD),
 * plaintext hash. The returned buffer is the caller's to wipe.
 */
export async function openArtifact(manifest: ManifestBody, artifact: Uint8Array, keys: KeyProvider): Promise<Buffer> {
  const ref = manifest.artifact;
  if (artifact.length < ref.ciphertextBytes) {
    throw new CitadelError(
      "ARTIFACT_TRUNCATED",
      `artifact has ${artifact.length} bytes, manifest says ${ref.ciphertextBytes}`,
    );
  }
  if (artifact.length !== ref.ciphertextBytes || sha256(artifact) !== ref.ciphertextSha256) {
    throw new CitadelError("ARTIFACT_HASH_MISMATCH", "artifact ciphertext does not match the manifest's SHA-256");
  }
  const key = await keys.unwrapDataKey(ref.keyName, ref.wrappedKey);
  let plaintext: Buffer | undefined;
  try {
    const d = createDecipheriv("aes-256-gcm", key, Buffer.from(ref.iv, "base64"));
    d.setAAD(artifactAad(manifest, ref.plaintextSha256));
    d.setAuthTag(Buffer.from(artifact.subarray(artifact.length - TAG_BYTES)));
    plaintext = d.update(artifact.subarray(0, artifact.length - TAG_BYTES));
    d.final();
  } catch (err) {
    plaintext?.fill(0);
    throw new CitadelError(
      "DECRYPTION_FAILED",
      "artifact does not authenticate under its key and identity",
      undefined,
      { cause: err },
    );
  } finally {
    key.fill(0);
  }
  if (sha256(plaintext) !== ref.plaintextSha256) {
    plaintext.fill(0);
    throw new CitadelError(
      "PLAINTEXT_HASH_MISMATCH",
      "decrypted model does not match the manifest's plaintext SHA-256",
    );
  }
  return plaintext;
}
