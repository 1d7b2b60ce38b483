import { CitadelError, type JobData } from "@citadel/contracts";
import type { Tenant } from "@citadel/tenants";

/**
 * What the submit path needs of completion webhooks: whether this deployment can send
 * them (the API holds the webhook key), and the SSRF guard a URL named per job or
 * batch must pass (it throws CALLBACK_URL_REFUSED).
 */
export interface CallbackPolicy {
  enabled: boolean;
  check(url: string): Promise<unknown>;
}

/**
 * Where a job's or batch's outcome is to be notified: to the URL the request named
 * (a right the tenant must hold, and a target the guard allows), to the tenant's own
 * callback URL (`{}`), or nowhere (undefined).
 */
export async function notifyFor(
  tenant: Tenant,
  named: string | undefined,
  policy: CallbackPolicy | undefined,
): Promise<JobData["notify"]> {
  if (named === undefined) return tenant.callbackUrl && policy?.enabled ? {} : undefined;
  if (!policy?.enabled)
    throw new CitadelError("CALLBACK_NOT_ALLOWED", "completion webhooks are not enabled in this deployment");
  if (!tenant.allowRequestCallbacks) {
    throw new CitadelError(
      "CALLBACK_NOT_ALLOWED",
      "this tenant may not name a callback URL per request (its own callback URL, if it has one, is called)",
    );
  }
  await policy.check(named);
  return { url: named };
}

/**
 * A guard's verdicts on URLs it allowed, remembered for `ttlMs` (at most `max` URLs): a
 * bulk of 500 jobs naming one callback resolves its host once. Refusals are not
 * remembered, and deliveries check again whatever was remembered here.
 */
export function rememberAllowed(check: (url: string) => Promise<unknown>, ttlMs: number, max = 1000) {
  const allowed = new Map<string, number>();
  return async (url: string): Promise<void> => {
    const until = allowed.get(url);
    if (until !== undefined && until > Date.now()) return;
    await check(url);
    if (allowed.size >= max) allowed.clear();
    allowed.set(url, Date.now() + ttlMs);
  };
}
