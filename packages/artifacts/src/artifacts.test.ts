import path from "node:path";
import { CitadelError, type SignedManifest, type TrustedSigner } from "@citadel/contracts";
import { initKeyring, LocalKeyProvider } from "@citadel/keys";
import { beforeAll, describe, expect, it } from "vitest";
import { tempDir } from "../../../test/support/temp-dirs.js";
import { canonicalJson } from "./canonical.js";
import { type ModelDescription, sealModel } from "./manifest.js";
import { openArtifact, sha256 } from "./seal.js";
import { signRetirement, verifyManifest, verifyRetirement } from "./signing.js";

const description = (name: string): ModelDescription => ({
  name,
  version: "1",
  format: "onnx",
  inputs: [{ name: "x", dtype: "float32", shape: [null, 3], batchAxis: 0 }],
  outputs: [{ name: "y", dtype: "float32", shape: [null, 3], batchAxis: 0 }],
  maxBatch: 8,
  maxQueueDelayMs: 2,
  timeoutMs: 1000,
  executionProviders: ["cpu"],
  outputPolicy: {},
});

let keys: LocalKeyProvider;
let trusted: TrustedSigner[];
const model = Buffer.from("pretend this is an onnx model ".repeat(40));

const keyDir = tempDir("keys");

beforeAll(async () => {
  const file = path.join(keyDir, "keyring.json");
  initKeyring(file);
  keys = new LocalKeyProvider(file);
  trusted = await keys.publicKeys();
});

async function codeOf(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
    return "none";
  } catch (e) {
    if (e instanceof CitadelError) return e.code;
    throw e;
  }
}

function flipBit(s: string, at: number): string {
  const b = Buffer.from(s);
  b[at % b.length] = (b[at % b.length] ?? 0) ^ 1;
  return b.toString();
}

describe("seal → verify → open", () => {
  it("round-trips and never stores plaintext in the artifact or manifest", async () => {
    const { signed, artifact } = await sealModel(model, description("m"), keys, "citadel-models", keys);
    const body = verifyManifest(signed, trusted, { name: "m", version: "1" });
    const plain = await openArtifact(body, artifact, keys);
    expect(plain.equals(model)).toBe(true);
    expect(artifact.includes(model.subarray(0, 64))).toBe(false);
    expect(JSON.stringify(signed)).not.toContain(model.subarray(0, 32).toString());
    expect(body.artifact.plaintextSha256).toBe(sha256(model));
  });

  it("signs a runBatch within maxBatch and refuses, before signing, one past it", async () => {
    const { signed } = await sealModel(model, { ...description("m"), runBatch: 4 }, keys, "citadel-models", keys);
    expect(verifyManifest(signed, trusted, { name: "m", version: "1" }).runBatch).toBe(4);
    await expect(
      sealModel(model, { ...description("m"), runBatch: 9 }, keys, "citadel-models", keys),
    ).rejects.toMatchObject({ code: "MANIFEST_INVALID", message: expect.stringContaining("runBatch") });
  });

  it("rejects every single-bit change to every manifest field (signature)", async () => {
    const { signed } = await sealModel(model, description("m"), keys, "citadel-models", keys);
    const leaves: string[][] = [];
    const walk = (v: unknown, p: string[]) => {
      if (v && typeof v === "object") for (const [k, c] of Object.entries(v)) walk(c, [...p, k]);
      else leaves.push(p);
    };
    walk(signed.manifest, []);
    expect(leaves.length).toBeGreaterThan(20);
    for (const leaf of leaves) {
      const copy = structuredClone(signed) as SignedManifest;
      let node = copy.manifest as unknown as Record<string, unknown>;
      for (const k of leaf.slice(0, -1)) node = node[k] as Record<string, unknown>;
      const key = leaf.at(-1) as string;
      const v = node[key];
      node[key] =
        typeof v === "string" ? flipBit(v, 3) : typeof v === "number" ? v + 1 : typeof v === "boolean" ? !v : 1;
      expect(await codeOf(async () => verifyManifest(copy, trusted)), leaf.join(".")).toBe("SIGNATURE_INVALID");
    }
  });

  it("gives each tampering its own code", async () => {
    const a = await sealModel(model, description("a"), keys, "citadel-models", keys);
    const b = await sealModel(
      Buffer.from("another model entirely ".repeat(30)),
      description("b"),
      keys,
      "citadel-models",
      keys,
    );
    const body = verifyManifest(a.signed, trusted);
    const flip = (buf: Buffer, at: number) => {
      const c = Buffer.from(buf);
      c[at] = (c[at] ?? 0) ^ 0x80;
      return c;
    };
    expect(await codeOf(() => openArtifact(body, flip(a.artifact, 5), keys))).toBe("ARTIFACT_HASH_MISMATCH");
    expect(await codeOf(() => openArtifact(body, flip(a.artifact, a.artifact.length - 1), keys))).toBe(
      "ARTIFACT_HASH_MISMATCH",
    );
    expect(await codeOf(() => openArtifact(body, a.artifact.subarray(0, a.artifact.length - 7), keys))).toBe(
      "ARTIFACT_TRUNCATED",
    );
    expect(await codeOf(() => openArtifact(body, b.artifact, keys))).toMatch(/ARTIFACT_(HASH_MISMATCH|TRUNCATED)/);
    const unsigned = { manifest: a.signed.manifest };
    expect(await codeOf(async () => verifyManifest(unsigned, trusted))).toBe("SIGNATURE_MISSING");
    const sig = a.signed.signature as NonNullable<SignedManifest["signature"]>;
    const badSig = { ...a.signed, signature: { ...sig, value: flipBit(sig.value, 10) } };
    expect(await codeOf(async () => verifyManifest(badSig, trusted))).toBe("SIGNATURE_INVALID");
    expect(
      await codeOf(async () =>
        verifyManifest(
          a.signed,
          [{ keyId: sig.keyId, publicKey: (await keys.publicKeys())[0]?.publicKey ?? "" }].map((t) => ({
            ...t,
            keyId: "other",
          })),
        ),
      ),
    ).toBe("SIGNER_UNTRUSTED");
    expect(await codeOf(async () => verifyManifest(b.signed, trusted, { name: "a", version: "1" }))).toBe(
      "MANIFEST_MODEL_MISMATCH",
    );
  });

  it("stops a forged manifest at the GCM tag and the key unwrap (defence in depth)", async () => {
    const a = await sealModel(model, description("a"), keys, "citadel-models", keys);
    const body = verifyManifest(a.signed, trusted);
    // A manifest whose hashes were recomputed by someone without the signing key:
    const tampered = Buffer.from(a.artifact);
    tampered[0] = (tampered[0] ?? 0) ^ 1;
    const forged = { ...body, artifact: { ...body.artifact, ciphertextSha256: sha256(tampered) } };
    expect(await codeOf(() => openArtifact(forged, tampered, keys))).toBe("DECRYPTION_FAILED");
    const otherIdentity = { ...body, name: "b" };
    expect(await codeOf(() => openArtifact(otherIdentity, a.artifact, keys))).toBe("DECRYPTION_FAILED");
    const badKey = {
      ...body,
      artifact: { ...body.artifact, wrappedKey: `local:v1:${Buffer.alloc(60, 1).toString("base64")}` },
    };
    expect(await codeOf(() => openArtifact(badKey, a.artifact, keys))).toBe("KEY_UNWRAP_FAILED");
  });

  it("keeps old key versions decrypting after rotation and rewrap", async () => {
    const a = await sealModel(model, description("a"), keys, "citadel-models", keys);
    const v = await keys.rotateKey("citadel-models");
    const rewrapped = await keys.rewrapDataKey("citadel-models", a.signed.manifest.artifact.wrappedKey);
    expect(rewrapped.startsWith(`local:v${v}:`)).toBe(true);
    const body = verifyManifest(a.signed, trusted);
    expect((await openArtifact(body, a.artifact, keys)).equals(model)).toBe(true);
    expect(
      (await openArtifact({ ...body, artifact: { ...body.artifact, wrappedKey: rewrapped } }, a.artifact, keys)).equals(
        model,
      ),
    ).toBe(true);
  });

  it("canonical JSON ignores key order", () => {
    expect(canonicalJson({ b: 1, a: [1, { d: 2, c: 3 }] })).toBe('{"a":[1,{"c":3,"d":2}],"b":1}');
  });
});

describe("signed retirements", () => {
  const body = {
    schema: "citadel.retirement/v1" as const,
    name: "m",
    version: "1",
    retiredAt: "2025-01-01T00:00:00.000Z",
    reason: "policy too loose",
  };

  it("verify against the pinned signers, for the version they name", async () => {
    const signed = await signRetirement(body, keys);
    expect(verifyRetirement(signed, trusted, { name: "m", version: "1" })).toEqual(body);
    expect(await codeOf(async () => verifyRetirement(signed, trusted, { name: "m", version: "2" }))).toBe(
      "MANIFEST_MODEL_MISMATCH",
    );
  });

  it("refuse a changed, unsigned, foreign-signed or malformed statement, each with its code", async () => {
    const signed = await signRetirement(body, keys);
    const at = { name: "m", version: "1" };
    const changed = { ...signed, retirement: { ...signed.retirement, reason: "other" } };
    expect(await codeOf(async () => verifyRetirement(changed, trusted, at))).toBe("SIGNATURE_INVALID");
    expect(await codeOf(async () => verifyRetirement({ retirement: body }, trusted, at))).toBe("SIGNATURE_MISSING");
    const foreign = { ...signed, signature: { ...signed.signature, keyId: "local:0000000000000000" } };
    expect(await codeOf(async () => verifyRetirement(foreign, trusted, at))).toBe("SIGNER_UNTRUSTED");
    expect(await codeOf(async () => verifyRetirement("not json", trusted, at))).toBe("MANIFEST_INVALID");
    // A manifest's signature cannot be lifted onto a retirement.
    const { signed: manifest } = await sealModel(model, description("m"), keys, "citadel-models", keys);
    const lifted = { retirement: body, signature: manifest.signature };
    expect(await codeOf(async () => verifyRetirement(lifted, trusted, at))).toBe("SIGNATURE_INVALID");
  });
});
