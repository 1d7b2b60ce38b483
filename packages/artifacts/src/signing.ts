import { createPublicKey, verify } from "node:crypto";
import {
  CitadelError,
  canonicalJson,
  ManifestBody,
  RetirementBody,
  type SignedManifest,
  type SignedRetirement,
  type TrustedSigner,
} from "@citadel/contracts";
import type { ManifestSigner } from "@citadel/keys";

// DER prefix of an ed25519 SubjectPublicKeyInfo; the raw 32-byte key follows it.
const ED25519_SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

export async function signManifest(body: ManifestBody, signer: ManifestSigner): Promise<SignedManifest> {
  const { keyId, signature } = await signer.sign(Buffer.from(canonicalJson(body)));
  return { manifest: body, signature: { alg: "ed25519", keyId, value: signature } };
}

/** Signs a retirement with the manifest signer: the same pinned keys vouch for it. */
export async function signRetirement(body: RetirementBody, signer: ManifestSigner): Promise<SignedRetirement> {
  const { keyId, signature } = await signer.sign(Buffer.from(canonicalJson(body)));
  return { retirement: body, signature: { alg: "ed25519", keyId, value: signature } };
}

/**
 * Checks a detached ed25519 signature over the canonical JSON of exactly what was
 * received, against the pinned signers. `what` names the statement in errors.
 */
function verifyDetached(body: unknown, signature: unknown, trusted: readonly TrustedSigner[], what: string): void {
  if (signature === undefined || signature === null)
    throw new CitadelError("SIGNATURE_MISSING", `${what} is not signed`);
  const sig = signature as { alg?: unknown; keyId?: unknown; value?: unknown };
  if (sig.alg !== "ed25519" || typeof sig.keyId !== "string" || typeof sig.value !== "string") {
    throw new CitadelError("SIGNATURE_INVALID", `${what} signature is malformed`);
  }
  const signer = trusted.find((t) => t.keyId === sig.keyId);
  if (!signer)
    throw new CitadelError("SIGNER_UNTRUSTED", `${what} is signed by '${sig.keyId}', which is not a pinned signer`);
  const key = createPublicKey({
    key: Buffer.concat([ED25519_SPKI_PREFIX, Buffer.from(signer.publicKey, "base64")]),
    format: "der",
    type: "spki",
  });
  const ok = verify(null, Buffer.from(canonicalJson(body)), key, Buffer.from(sig.value, "base64"));
  if (!ok) throw new CitadelError("SIGNATURE_INVALID", `${what} signature does not verify`);
}

/**
 * Verifies a stored manifest before anything in it is trusted: the signature is
 * checked over the canonical bytes of exactly what was received, then the body is
 * parsed strictly, then its identity is compared with what the caller asked for.
 */
export function verifyManifest(
  raw: unknown,
  trusted: readonly TrustedSigner[],
  expect?: { name: string; version: string },
): ManifestBody {
  if (typeof raw !== "object" || raw === null || typeof (raw as { manifest?: unknown }).manifest !== "object") {
    throw new CitadelError("MANIFEST_INVALID", "manifest envelope is malformed");
  }
  const { manifest, signature } = raw as { manifest: unknown; signature?: unknown };
  verifyDetached(manifest, signature, trusted, "manifest");
  const parsed = ManifestBody.safeParse(manifest);
  if (!parsed.success)
    throw new CitadelError("MANIFEST_INVALID", `signed manifest fails the schema: ${parsed.error.issues[0]?.message}`);
  if (expect && (parsed.data.name !== expect.name || parsed.data.version !== expect.version)) {
    throw new CitadelError(
      "MANIFEST_MODEL_MISMATCH",
      `manifest is for ${parsed.data.name}@${parsed.data.version}, registry entry is ${expect.name}@${expect.version}`,
    );
  }
  return parsed.data;
}

/**
 * Verifies a stored retirement the same way: signature by a pinned signer over what
 * was received, strict schema, and the version it names is the one it is stored for
 * (a retirement copied onto another version does not retire that one).
 */
export function verifyRetirement(
  raw: unknown,
  trusted: readonly TrustedSigner[],
  expect: { name: string; version: string },
): RetirementBody {
  if (typeof raw !== "object" || raw === null || typeof (raw as { retirement?: unknown }).retirement !== "object") {
    throw new CitadelError("MANIFEST_INVALID", "retirement envelope is malformed");
  }
  const { retirement, signature } = raw as { retirement: unknown; signature?: unknown };
  verifyDetached(retirement, signature, trusted, "retirement");
  const parsed = RetirementBody.safeParse(retirement);
  if (!parsed.success)
    throw new CitadelError(
      "MANIFEST_INVALID",
      `signed retirement fails the schema: ${parsed.error.issues[0]?.message}`,
    );
  if (parsed.data.name !== expect.name || parsed.data.version !== expect.version) {
    throw new CitadelError(
      "MANIFEST_MODEL_MISMATCH",
      `retirement is for ${parsed.data.name}@${parsed.data.version}, registry entry is ${expect.name}@${expect.version}`,
    );
  }
  return parsed.data;
}

/**
 * Whether a stored retirement holds: signed by a pinned signer, for this version.
 * Anything else (absent: false, silently) is ignored and reported through `forged`:
 * an unsigned or forged retirement must not be able to deny service.
 */
export function retirementHolds(
  raw: unknown,
  trusted: readonly TrustedSigner[],
  id: { name: string; version: string },
  forged: (problem: CitadelError) => void,
): boolean {
  if (raw === undefined || raw === null) return false;
  try {
    verifyRetirement(raw, trusted, id);
    return true;
  } catch (err) {
    forged(
      err instanceof CitadelError
        ? err
        : new CitadelError("MANIFEST_INVALID", err instanceof Error ? err.message : "retirement is malformed"),
    );
    return false;
  }
}
