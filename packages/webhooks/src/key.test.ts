import { randomBytes } from "node:crypto";
import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import { WebhookKey } from "./key.js";

const tenant = (id: string, generation: number, previousUntil?: number) => ({
  id,
  webhookSecret: { generation, ...(previousUntil !== undefined ? { previousUntil } : {}) },
});

describe("WebhookKey", () => {
  it("derives one secret per tenant and generation, the same every time, in the whsec_ form", () => {
    const raw = randomBytes(32);
    const key = new WebhookKey(raw);
    const s = key.secretFor("acme", 1);
    expect(s).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    expect(Buffer.from(s.slice(6), "base64")).toHaveLength(32);
    expect(new WebhookKey(raw).secretFor("acme", 1)).toBe(s);
    expect(key.secretFor("acme", 2)).not.toBe(s);
    expect(key.secretFor("acme2", 1)).not.toBe(s);
    expect(new WebhookKey(randomBytes(32)).secretFor("acme", 1)).not.toBe(s);
  });

  it("signs with the previous generation too only while a rotation's grace lasts", () => {
    const key = new WebhookKey(randomBytes(32));
    const now = 1_000_000;
    expect(key.signingSecrets(tenant("acme", 1), now)).toEqual([key.secretFor("acme", 1)]);
    expect(key.signingSecrets(tenant("acme", 2, now + 1), now)).toEqual([
      key.secretFor("acme", 2),
      key.secretFor("acme", 1),
    ]);
    expect(key.signingSecrets(tenant("acme", 2, now), now)).toEqual([key.secretFor("acme", 2)]);
  });

  it("refuses a short key, and never shows its bytes", () => {
    expect(() => new WebhookKey(randomBytes(16))).toThrow(/at least 32 bytes/);
    const raw = randomBytes(32);
    const key = WebhookKey.adopt(Buffer.from(raw));
    const shown = `${inspect(key)} ${JSON.stringify({ key })} ${String(Object.keys(key))}`;
    expect(shown).not.toContain(raw.toString("base64"));
    expect(shown).not.toContain(raw.toString("hex"));
  });
});
