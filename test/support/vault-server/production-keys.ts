import type { VaultTestServer } from "./server.js";

/** The Transit key models are sealed under (VAULT_MODEL_KEY's default). */
export const MODEL_KEY = "citadel-models";

/** A signing key's public key, as TRUSTED_SIGNERS pins it. */
export interface PinnedSigner {
  keyId: string;
  publicKey: string;
}

/**
 * The Transit keys of the production set-up, made with the root token: the models'
 * aes256-gcm96 key and the ed25519 signing key. Returns the signing key's public keys
 * to pin.
 */
export async function prepareProductionKeys(vault: VaultTestServer): Promise<PinnedSigner[]> {
  const call = async (method: string, p: string, body?: object): Promise<Record<string, unknown>> => {
    const r = await fetch(`${vault.addr}/v1/${p}`, {
      method,
      headers: { "x-vault-token": vault.rootToken, "content-type": "application/json" },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    if (r.status >= 300) throw new Error(`vault ${method} ${p}: ${r.status} ${await r.text()}`);
    const text = await r.text();
    return text ? (JSON.parse(text) as Record<string, unknown>) : {};
  };
  await call("POST", `transit/keys/${MODEL_KEY}`, { type: "aes256-gcm96" });
  await call("POST", "transit/keys/citadel-signing", { type: "ed25519" });
  const signing = (await call("GET", "transit/keys/citadel-signing")) as {
    data: { keys: Record<string, { public_key: string }> };
  };
  return Object.entries(signing.data.keys).map(([v, k]) => ({
    keyId: `vault:transit/citadel-signing:v${v}`,
    publicKey: k.public_key,
  }));
}
