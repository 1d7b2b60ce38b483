import { createHash, createHmac } from "node:crypto";
import type { WebhookEventType } from "@citadel/contracts";
import { SECRET_PREFIX } from "./key.js";

/**
 * One Standard Webhooks signature (https://www.standardwebhooks.com/, "Signature
 * scheme"): `v1,` and base64 of HMAC-SHA256 over `<msg id>.<timestamp>.<body>`, keyed
 * with the secret's bytes (the base64 after `whsec_`).
 */
export function webhookSignature(secret: string, msgId: string, timestamp: number, body: string): string {
  const key = Buffer.from(secret.startsWith(SECRET_PREFIX) ? secret.slice(SECRET_PREFIX.length) : secret, "base64");
  try {
    return `v1,${createHmac("sha256", key).update(`${msgId}.${timestamp}.${body}`).digest("base64")}`;
  } finally {
    key.fill(0);
  }
}

/**
 * The headers of one delivery attempt: the message id (the same on every attempt, for
 * the receiver's deduplication), this attempt's time in unix seconds, and one signature
 * per secret, space-separated (two while a secret rotation's grace lasts).
 */
export function webhookHeaders(
  msgId: string,
  timestamp: number,
  body: string,
  secrets: readonly string[],
): Record<"webhook-id" | "webhook-timestamp" | "webhook-signature", string> {
  if (secrets.length === 0) throw new Error("a webhook needs at least one secret to be signed with");
  return {
    "webhook-id": msgId,
    "webhook-timestamp": String(timestamp),
    "webhook-signature": secrets.map((s) => webhookSignature(s, msgId, timestamp, body)).join(" "),
  };
}

/**
 * A notification's message id: derived from what it announces, so every path that
 * announces the same event (a stream entry read twice, a settle repeated after a lost
 * lock) names the same message, and the delivery queue keeps one job for it.
 */
export function messageId(kind: "job" | "batch", id: string, type: WebhookEventType): string {
  return `msg_${createHash("sha256").update(`${kind}|${id}|${type}`).digest("base64url").slice(0, 27)}`;
}
