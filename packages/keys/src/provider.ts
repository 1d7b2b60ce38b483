/**
 * The key service as Citadel sees it. Vault Transit is the production provider; the
 * local provider emulates the same operations from a dev keyring file.
 *
 * Callers own every Buffer they receive and must wipe it (`buf.fill(0)`) after use.
 */
export interface DataKey {
  /** 32 random bytes; wipe after use. */
  plaintext: Buffer;
  /** The same key wrapped by the key service (`vault:vN:…` / `local:vN:…`). */
  wrapped: string;
}

export interface KeyProvider {
  readonly kind: "vault" | "local";
  /** A fresh 256-bit data key (Transit `datakey/plaintext/<keyName>`). */
  generateDataKey(keyName: string): Promise<DataKey>;
  /** Unwrap a data key (Transit `decrypt/<keyName>`). */
  unwrapDataKey(keyName: string, wrapped: string): Promise<Buffer>;
  /** Re-wrap under the newest key version without exposing the plaintext (Transit `rewrap`). */
  rewrapDataKey(keyName: string, wrapped: string): Promise<string>;
  /** Create a new key version (Transit `keys/<keyName>/rotate`); returns the new latest version. */
  rotateKey(keyName: string): Promise<number>;
  close(): Promise<void>;
}

export interface SignerPublicKey {
  /** Stable id written into each signature, e.g. `vault:transit/citadel-signing:v1` or `local:<fp>`. */
  keyId: string;
  /** Raw 32-byte ed25519 public key, base64. */
  publicKey: string;
}

/** Signs manifests with ed25519 (Transit `sign/<key>` or a local key). */
export interface ManifestSigner {
  sign(payload: Buffer): Promise<{ keyId: string; signature: string }>;
  /** Every version's public key, for pinning on the workers. */
  publicKeys(): Promise<SignerPublicKey[]>;
}
