import { createHmac } from "node:crypto";
import { inspect } from "node:util";
import type { Tenant } from "@citadel/tenants";

/** Bytes the operator's webhook key must have at least. */
export const WEBHOOK_KEY_MIN_BYTES = 32;

/** The prefix Standard Webhooks gives a symmetric secret (base64 of its bytes follows). */
export const SECRET_PREFIX = "whsec_";

/**
 * The operator's webhook key: every tenant's webhook secret is derived from it, so no
 * secret is stored anywhere (Redis holds only each tenant's generation). The API signs
 * with it and the CLI shows a tenant its secret; workers never hold it. Like the audit
 * key, it is not enumerable, not serialised and not printed.
 */
export class WebhookKey {
  readonly #key: Buffer;

  /** @param key copied; the caller may wipe its buffer afterwards. */
  constructor(key: Uint8Array) {
    if (key.length < WEBHOOK_KEY_MIN_BYTES)
      throw new Error(`a webhook key needs at least ${WEBHOOK_KEY_MIN_BYTES} bytes, got ${key.length}`);
    this.#key = Buffer.from(key);
  }

  /** A key from bytes the caller is done with: copied, then wiped. */
  static adopt(key: Buffer): WebhookKey {
    try {
      return new WebhookKey(key);
    } finally {
      key.fill(0);
    }
  }

  /**
   * A tenant's secret of one generation, as Standard Webhooks writes it: `whsec_` and
   * base64 of 32 bytes, HMAC-SHA256 of the tenant and generation under this key.
   * Tenant ids hold no '|', so no two (tenant, generation) pairs share an input.
   */
  secretFor(tenantId: string, generation: number): string {
    const bytes = createHmac("sha256", this.#key)
      .update(`citadel.webhook.secret/v1|${tenantId}|${generation}`)
      .digest();
    return `${SECRET_PREFIX}${bytes.toString("base64")}`;
  }

  /**
   * The secrets a notification to `tenant` is signed with: its current one, and the one
   * before while a rotation's grace lasts (a receiver then accepts either signature).
   */
  signingSecrets(tenant: Pick<Tenant, "id" | "webhookSecret">, now = Date.now()): string[] {
    const { generation, previousUntil } = tenant.webhookSecret;
    const current = this.secretFor(tenant.id, generation);
    return previousUntil !== undefined && now < previousUntil && generation > 1
      ? [current, this.secretFor(tenant.id, generation - 1)]
      : [current];
  }

  toJSON(): string {
    return "WebhookKey";
  }

  [inspect.custom](): string {
    return "WebhookKey";
  }
}
