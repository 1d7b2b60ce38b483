import { describe, expect, it } from "vitest";
import { messageId, webhookHeaders, webhookSignature } from "./sign.js";

// The test vector published with the Standard Webhooks reference libraries
// (standard-webhooks/standard-webhooks): a receiver's library verifies what this signs.
const VECTOR = {
  secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
  id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
  timestamp: 1614265330,
  body: '{"test": 2432232314}',
  signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
};

describe("Standard Webhooks signatures", () => {
  it("reproduces the specification's test vector", () => {
    expect(webhookSignature(VECTOR.secret, VECTOR.id, VECTOR.timestamp, VECTOR.body)).toBe(VECTOR.signature);
    // The whsec_ prefix is optional, as in the reference libraries.
    expect(webhookSignature(VECTOR.secret.slice(6), VECTOR.id, VECTOR.timestamp, VECTOR.body)).toBe(VECTOR.signature);
  });

  it("signs id, timestamp and body: changing any one changes the signature", () => {
    const base = webhookSignature(VECTOR.secret, VECTOR.id, VECTOR.timestamp, VECTOR.body);
    expect(webhookSignature(VECTOR.secret, `${VECTOR.id}x`, VECTOR.timestamp, VECTOR.body)).not.toBe(base);
    expect(webhookSignature(VECTOR.secret, VECTOR.id, VECTOR.timestamp + 1, VECTOR.body)).not.toBe(base);
    expect(webhookSignature(VECTOR.secret, VECTOR.id, VECTOR.timestamp, `${VECTOR.body} `)).not.toBe(base);
  });

  it("puts one signature per secret in webhook-signature, space-separated, the current secret first", () => {
    const other = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const h = webhookHeaders(VECTOR.id, VECTOR.timestamp, VECTOR.body, [VECTOR.secret, other]);
    expect(h["webhook-id"]).toBe(VECTOR.id);
    expect(h["webhook-timestamp"]).toBe("1614265330");
    expect(h["webhook-signature"].split(" ")).toEqual([
      VECTOR.signature,
      webhookSignature(other, VECTOR.id, VECTOR.timestamp, VECTOR.body),
    ]);
    expect(() => webhookHeaders(VECTOR.id, VECTOR.timestamp, VECTOR.body, [])).toThrow(/at least one secret/);
  });

  it("names a notification by what it announces: the same event the same id, another event another", () => {
    const a = messageId("job", "tiny.AbCdEfGhIjKlMnOpQr", "job.completed");
    expect(a).toMatch(/^msg_[A-Za-z0-9_-]{27}$/);
    expect(messageId("job", "tiny.AbCdEfGhIjKlMnOpQr", "job.completed")).toBe(a);
    expect(messageId("job", "tiny.AbCdEfGhIjKlMnOpQs", "job.completed")).not.toBe(a);
    expect(messageId("job", "tiny.AbCdEfGhIjKlMnOpQr", "job.failed")).not.toBe(a);
  });
});
