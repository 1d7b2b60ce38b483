import { writeFileSync } from "node:fs";
import path from "node:path";
import { startTestFleet, type TestFleet } from "./fleet.js";
import { POLICY_DIR, startVaultTestServer, type VaultTestServer } from "./vault-server/index.js";

export const MODEL_KEY = "citadel-models";

/**
 * An in-process fleet on the production key path, against the Vault-API test server
 * (whose request log a test can read): models sealed under Transit data keys and
 * signed by Transit ed25519 with a publisher token; workers hold a decrypt-only token
 * and verify against pinned public keys.
 */
export async function startVaultTestFleet(
  opts: { workers?: number; env?: Record<string, string>; workerEnv?: Record<string, string> } = {},
): Promise<{ fleet: TestFleet; vault: VaultTestServer; close(): Promise<void> }> {
  const vault = await startVaultTestServer({ policyDir: POLICY_DIR });
  try {
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
    const pinned = Object.entries(signing.data.keys).map(([v, k]) => ({
      keyId: `vault:transit/citadel-signing:v${v}`,
      publicKey: k.public_key,
    }));
    const fleet = await startTestFleet({
      workers: opts.workers ?? 1,
      env: {
        KEY_PROVIDER: "vault",
        VAULT_ADDR: vault.addr,
        VAULT_AUTH: "token",
        VAULT_TOKEN: vault.createToken(["citadel-publisher"]),
        ...opts.env,
      },
      workerEnv: { VAULT_TOKEN: vault.createToken(["citadel-worker"]), ...opts.workerEnv },
      beforeStart: (dir) => {
        const file = path.join(dir, "trusted-signers.json");
        writeFileSync(file, JSON.stringify(pinned), { mode: 0o600 });
        return { TRUSTED_SIGNERS: file };
      },
    });
    return {
      fleet,
      vault,
      close: async () => {
        await fleet.close();
        await vault.stop();
      },
    };
  } catch (err) {
    await vault.stop();
    throw err;
  }
}

/** Transit decrypt calls (data-key unwraps) Vault has answered so far. */
export function unwrapCalls(vault: VaultTestServer): number {
  return vault.requests.filter((r) => r.method !== "GET" && r.path === `transit/decrypt/${MODEL_KEY}`).length;
}
