import { fromBase64 } from "./base64.js";

/**
 * Verifies a completion notification as a receiver must, per the Standard Webhooks
 * specification (https://www.standardwebhooks.com/): the secret is `whsec_` + base64 of
 * the key; the signed content is `${webhook-id}.${webhook-timestamp}.${body}` (the raw
 * body, byte for byte); the signature is HMAC-SHA256, sent in `webhook-signature` as a
 * space-separated list of `v1,<base64>` (several during a key rotation); the timestamp
 * (Unix seconds) must be within the tolerance of now, which stops replays. Web Crypto
 * only, so it runs in Node >= 20, browsers and edge runtimes.
 */

export type WebhookFailure =
  | "MISSING_HEADERS"
  | "INVALID_TIMESTAMP"
  | "TIMESTAMP_OUT_OF_TOLERANCE"
  | "INVALID_SECRET"
  | "NO_MATCHING_SIGNATURE"
  | "INVALID_PAYLOAD";

export class WebhookVerificationError extends Error {
  override readonly name = "WebhookVerificationError";
  constructor(
    readonly code: WebhookFailure,
    message: string,
  ) {
    super(message);
  }
}

export type WebhookHeaders = Headers | Readonly<Record<string, string | readonly string[] | undefined>>;

export interface VerifyOptions {
  /** How far the timestamp may be from now, either way, in seconds. Default 300. */
  toleranceSec?: number;
  /** Now, for tests (default: the clock). */
  now?: Date;
}

function header(headers: WebhookHeaders, name: string): string | undefined {
  if (headers instanceof Headers) return headers.get(name) ?? undefined;
  for (const [k, v] of Object.entries(headers)) {
    if (k.toLowerCase() !== name) continue;
    return typeof v === "string" ? v : v?.join(", ");
  }
  return undefined;
}

/** The HMAC key of a secret (Web Crypto's CryptoKey, named by what importKey returns). */
async function importKey(secret: string): ReturnType<typeof crypto.subtle.importKey> {
  const encoded = secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret;
  let raw: Uint8Array;
  try {
    raw = fromBase64(encoded);
  } catch {
    throw new WebhookVerificationError("INVALID_SECRET", "the webhook secret is not whsec_ followed by base64");
  }
  if (raw.length === 0) throw new WebhookVerificationError("INVALID_SECRET", "the webhook secret is empty");
  return crypto.subtle.importKey("raw", raw as Uint8Array<ArrayBuffer>, { name: "HMAC", hash: "SHA-256" }, false, [
    "verify",
  ]);
}

/**
 * Verifies the notification and returns its parsed JSON payload; throws
 * WebhookVerificationError (with a code) otherwise. `secret` may list several (an old
 * and a new during a rotation): one match is enough. `rawBody` must be the body as it
 * arrived, not a re-serialised parse of it.
 */
export async function verifyWebhook(
  secret: string | readonly string[],
  headers: WebhookHeaders,
  rawBody: string | Uint8Array,
  opts: VerifyOptions = {},
): Promise<unknown> {
  const id = header(headers, "webhook-id");
  const timestamp = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");
  if (!id || !timestamp || !signatures) {
    throw new WebhookVerificationError(
      "MISSING_HEADERS",
      "webhook-id, webhook-timestamp and webhook-signature are all required",
    );
  }
  if (!/^\d{1,15}$/.test(timestamp)) {
    throw new WebhookVerificationError("INVALID_TIMESTAMP", "webhook-timestamp is not Unix seconds");
  }
  const tolerance = opts.toleranceSec ?? 300;
  const now = Math.floor((opts.now ?? new Date()).getTime() / 1000);
  if (Math.abs(now - Number(timestamp)) > tolerance) {
    throw new WebhookVerificationError(
      "TIMESTAMP_OUT_OF_TOLERANCE",
      `webhook-timestamp is more than ${tolerance} s from now`,
    );
  }
  const body = typeof rawBody === "string" ? new TextEncoder().encode(rawBody) : rawBody;
  const prefix = new TextEncoder().encode(`${id}.${timestamp}.`);
  const signed = new Uint8Array(prefix.length + body.length);
  signed.set(prefix);
  signed.set(body, prefix.length);
  const candidates = signatures
    .split(" ")
    .filter((s) => s.startsWith("v1,"))
    .flatMap((s) => {
      try {
        return [fromBase64(s.slice(3))];
      } catch {
        return []; // not base64: it matches nothing
      }
    });
  for (const key of await Promise.all((typeof secret === "string" ? [secret] : secret).map(importKey))) {
    for (const mac of candidates) {
      // subtle.verify compares in constant time.
      if (await crypto.subtle.verify("HMAC", key, mac as Uint8Array<ArrayBuffer>, signed)) return parse(body);
    }
  }
  throw new WebhookVerificationError("NO_MATCHING_SIGNATURE", "no v1 signature matches the body and the secret");
}

function parse(body: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch {
    throw new WebhookVerificationError("INVALID_PAYLOAD", "the signed body is not UTF-8 JSON");
  }
}
