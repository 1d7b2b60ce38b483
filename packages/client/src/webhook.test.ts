import { createHmac } from "node:crypto";
import { describe, expect, it } from "vitest";
import { verifyWebhook, type WebhookFailure } from "./webhook.js";

// The Standard Webhooks specification's own test vector (also the svix libraries').
const SPEC = {
  secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
  id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
  timestamp: 1614265330,
  body: '{"test": 2432232314}',
  signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
};
const at = (s: number) => new Date(s * 1000);

/** A signature computed here with node:crypto, apart from the code under test. */
function sign(secret: string, id: string, ts: number, body: string): string {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  return `v1,${createHmac("sha256", key).update(`${id}.${ts}.${body}`).digest("base64")}`;
}

const headers = (id: string, ts: number, signature: string) => ({
  "webhook-id": id,
  "webhook-timestamp": String(ts),
  "webhook-signature": signature,
});

async function failure(p: Promise<unknown>): Promise<WebhookFailure | "none"> {
  try {
    await p;
    return "none";
  } catch (err) {
    return (err as { code: WebhookFailure }).code;
  }
}

describe("verifyWebhook", () => {
  it("accepts the specification's test vector and returns the payload", async () => {
    const h = headers(SPEC.id, SPEC.timestamp, SPEC.signature);
    expect(await verifyWebhook(SPEC.secret, h, SPEC.body, { now: at(SPEC.timestamp) })).toEqual({ test: 2432232314 });
    // The vector agrees with an HMAC computed independently.
    expect(sign(SPEC.secret, SPEC.id, SPEC.timestamp, SPEC.body)).toBe(SPEC.signature);
  });

  it("accepts Headers, raw bytes, several signatures and a rotated secret", async () => {
    const secret = `whsec_${Buffer.from("a 32-byte key for the test suite").toString("base64")}`;
    const ts = 1_750_000_000;
    const body = new TextEncoder().encode('{"type":"job.completed","data":{"id":"m.1"}}');
    const good = sign(secret, "evt_1", ts, new TextDecoder().decode(body));
    const h = new Headers(headers("evt_1", ts, `v1a,ignored v1,AAAA ${good}`));
    expect(await verifyWebhook([SPEC.secret, secret], h, body, { now: at(ts + 299) })).toMatchObject({
      type: "job.completed",
    });
  });

  it("refuses a changed body, id or timestamp, another secret, and no v1 signature", async () => {
    const now = { now: at(SPEC.timestamp) };
    const h = headers(SPEC.id, SPEC.timestamp, SPEC.signature);
    expect(await failure(verifyWebhook(SPEC.secret, h, '{"test": 2432232315}', now))).toBe("NO_MATCHING_SIGNATURE");
    const otherId = headers("msg_other", SPEC.timestamp, SPEC.signature);
    expect(await failure(verifyWebhook(SPEC.secret, otherId, SPEC.body, now))).toBe("NO_MATCHING_SIGNATURE");
    const otherTs = headers(SPEC.id, SPEC.timestamp + 1, SPEC.signature);
    expect(await failure(verifyWebhook(SPEC.secret, otherTs, SPEC.body, now))).toBe("NO_MATCHING_SIGNATURE");
    const other = `whsec_${Buffer.from("another key entirely, 32 bytes!!").toString("base64")}`;
    expect(await failure(verifyWebhook(other, h, SPEC.body, now))).toBe("NO_MATCHING_SIGNATURE");
    const v2 = headers(SPEC.id, SPEC.timestamp, SPEC.signature.replace("v1,", "v2,"));
    expect(await failure(verifyWebhook(SPEC.secret, v2, SPEC.body, now))).toBe("NO_MATCHING_SIGNATURE");
  });

  it("refuses a timestamp outside the tolerance, either way, and one that is not Unix seconds", async () => {
    const h = headers(SPEC.id, SPEC.timestamp, SPEC.signature);
    for (const skew of [-301, 301]) {
      expect(await failure(verifyWebhook(SPEC.secret, h, SPEC.body, { now: at(SPEC.timestamp + skew) }))).toBe(
        "TIMESTAMP_OUT_OF_TOLERANCE",
      );
    }
    expect(
      await failure(verifyWebhook(SPEC.secret, h, SPEC.body, { now: at(SPEC.timestamp + 500), toleranceSec: 600 })),
    ).toBe("none");
    const bad = { ...h, "webhook-timestamp": "1614265330.5" };
    expect(await failure(verifyWebhook(SPEC.secret, bad, SPEC.body, { now: at(SPEC.timestamp) }))).toBe(
      "INVALID_TIMESTAMP",
    );
  });

  it("refuses missing headers, a secret that is not base64, and a signed body that is not JSON", async () => {
    const now = { now: at(SPEC.timestamp) };
    const { "webhook-id": _, ...noId } = headers(SPEC.id, SPEC.timestamp, SPEC.signature);
    expect(await failure(verifyWebhook(SPEC.secret, noId, SPEC.body, now))).toBe("MISSING_HEADERS");
    const h = headers(SPEC.id, SPEC.timestamp, SPEC.signature);
    expect(await failure(verifyWebhook("whsec_not*base64", h, SPEC.body, now))).toBe("INVALID_SECRET");
    const text = "not json";
    const signed = headers(SPEC.id, SPEC.timestamp, sign(SPEC.secret, SPEC.id, SPEC.timestamp, text));
    expect(await failure(verifyWebhook(SPEC.secret, signed, text, now))).toBe("INVALID_PAYLOAD");
  });
});
