import { existsSync } from "node:fs";
import { readKeyFile } from "@citadel/config";
import { CitadelError } from "@citadel/contracts";
import { LocalKeyProvider } from "@citadel/keys";
import type { Tenant } from "@citadel/tenants";
import { TargetGuard, WebhookKey } from "@citadel/webhooks";
import type { CliEnv } from "./context.js";

/**
 * The operator's webhook key, as the API reads it: WEBHOOK_KEY_FILE, or outside
 * production one derived from the dev keyring (the same one the dev API derives).
 */
export function cliWebhookKey(env: CliEnv): WebhookKey {
  if (env.WEBHOOK_KEY_FILE) return WebhookKey.adopt(readKeyFile(env.WEBHOOK_KEY_FILE));
  if (env.NODE_ENV !== "production" && existsSync(env.LOCAL_KEYRING))
    return WebhookKey.adopt(new LocalKeyProvider(env.LOCAL_KEYRING).webhookSecret());
  throw new CitadelError(
    "VALIDATION_FAILED",
    "no webhook key: set WEBHOOK_KEY_FILE to the file the API reads (base64 of 32 random bytes)",
  );
}

/** A tenant's secrets that verify its notifications now: its current one first, then (during a rotation's grace) the one before. */
export function tenantSecrets(key: WebhookKey, tenant: Tenant): { current: string; previous?: string; until?: string } {
  const [current, previous] = key.signingSecrets(tenant);
  const until = tenant.webhookSecret.previousUntil;
  return {
    current: current as string,
    ...(previous ? { previous, until: new Date(until ?? 0).toISOString() } : {}),
  };
}

/** Checks a tenant's callback URL as the API will when it delivers (the operator's allowlist applies). */
export async function checkCallbackUrl(env: CliEnv, url: string): Promise<void> {
  await new TargetGuard(env.WEBHOOK_ALLOW_HOSTS, { ports: env.WEBHOOK_PORTS }).check(url);
}
