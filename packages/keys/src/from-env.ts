import { readFileSync } from "node:fs";
import { CitadelError, TrustedSigner } from "@citadel/contracts";
import { z } from "zod";
import { LocalKeyProvider } from "./local.js";
import type { KeyProvider, ManifestSigner } from "./provider.js";

/** The key settings a process reads from its environment (see @citadel/config KeyEnv). */
export interface KeySettings {
  KEY_PROVIDER: "local" | "vault";
  LOCAL_KEYRING: string;
  TRUSTED_SIGNERS?: string | undefined;
  VAULT_ADDR?: string | undefined;
  VAULT_AUTH: "token" | "approle" | "kubernetes";
  VAULT_TOKEN?: string | undefined;
  VAULT_ROLE_ID?: string | undefined;
  VAULT_SECRET_ID?: string | undefined;
  VAULT_SECRET_ID_FILE?: string | undefined;
  VAULT_K8S_ROLE?: string | undefined;
  VAULT_K8S_MOUNT: string;
  VAULT_K8S_JWT_PATH: string;
  VAULT_TRANSIT_MOUNT: string;
  VAULT_SIGNING_KEY: string;
}

export type KeyService = KeyProvider & ManifestSigner;

interface MinimalLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** Builds the configured key service: Vault Transit, or the local dev keyring. */
export async function keyServiceFromEnv(env: KeySettings, log?: MinimalLogger): Promise<KeyService> {
  if (env.KEY_PROVIDER === "local") return new LocalKeyProvider(env.LOCAL_KEYRING);
  const { createVaultKeyProvider } = await import("./vault/index.js");
  const auth =
    env.VAULT_AUTH === "token"
      ? { method: "token" as const, token: env.VAULT_TOKEN ?? "" }
      : env.VAULT_AUTH === "approle"
        ? {
            method: "approle" as const,
            roleId: env.VAULT_ROLE_ID ?? "",
            secretId: env.VAULT_SECRET_ID ?? readFileSync(env.VAULT_SECRET_ID_FILE ?? "", "utf8").trim(),
          }
        : {
            method: "kubernetes" as const,
            role: env.VAULT_K8S_ROLE ?? "",
            jwtPath: env.VAULT_K8S_JWT_PATH,
            mount: env.VAULT_K8S_MOUNT,
          };
  return createVaultKeyProvider(
    { addr: env.VAULT_ADDR ?? "", auth, transitMount: env.VAULT_TRANSIT_MOUNT, signingKey: env.VAULT_SIGNING_KEY },
    log,
  );
}

/**
 * The signer keys a worker trusts: pinned in a file (production), or in dev with the
 * local provider, the keyring's own public keys.
 */
export async function trustedSignersFromEnv(env: KeySettings, keys: KeyService): Promise<TrustedSigner[]> {
  if (env.TRUSTED_SIGNERS) return readTrustedSigners(env.TRUSTED_SIGNERS);
  if (env.KEY_PROVIDER === "local") return keys.publicKeys();
  throw new CitadelError("SIGNER_UNTRUSTED", "TRUSTED_SIGNERS is required with the vault key provider");
}

export function readTrustedSigners(file: string): TrustedSigner[] {
  const parsed = z
    .array(TrustedSigner)
    .min(1)
    .safeParse(JSON.parse(readFileSync(file, "utf8")));
  if (!parsed.success) throw new CitadelError("SIGNER_UNTRUSTED", `${file} is not a list of {keyId, publicKey}`);
  return parsed.data;
}
