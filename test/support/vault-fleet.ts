import { writeFileSync } from "node:fs";
import path from "node:path";
import { startTestFleet, type TestFleet } from "./fleet.js";
import {
  MODEL_KEY,
  POLICY_DIR,
  prepareProductionKeys,
  startVaultTestServer,
  type VaultTestServer,
} from "./vault-server/index.js";

export { MODEL_KEY };

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
    const pinned = await prepareProductionKeys(vault);
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
