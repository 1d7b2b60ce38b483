import { describe, expect, it } from "vitest";
import { z } from "zod";
import { BoolEnv, CommonEnv, ConfigError, KeyEnv, parseEnv, refineKeyEnv } from "./index.js";

describe("parseEnv", () => {
  it("lists every problem without echoing values", () => {
    const Env = CommonEnv.extend({ PORT: z.coerce.number().int().max(65535) });
    try {
      parseEnv(Env, { REDIS_URL: "not a url hunter2", PORT: "99999", LOG_LEVEL: "loud" });
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      const msg = (err as ConfigError).message;
      expect((err as ConfigError).problems).toHaveLength(3);
      expect(msg).toContain("REDIS_URL");
      expect(msg).toContain("PORT");
      expect(msg).toContain("LOG_LEVEL");
      expect(msg).not.toContain("hunter2");
    }
  });

  it("reads booleans strictly", () => {
    expect(BoolEnv.parse("false")).toBe(false);
    expect(BoolEnv.parse("1")).toBe(true);
    expect(BoolEnv.safeParse("maybe").success).toBe(false);
  });

  it("refuses the local key provider in production unless forced", () => {
    const Env = CommonEnv.extend(KeyEnv.shape).superRefine(refineKeyEnv);
    expect(() => parseEnv(Env, { NODE_ENV: "production" })).toThrow(/local key provider/);
    expect(parseEnv(Env, { NODE_ENV: "production", ALLOW_LOCAL_KEYS_IN_PRODUCTION: "true" }).KEY_PROVIDER).toBe(
      "local",
    );
    expect(() => parseEnv(Env, { KEY_PROVIDER: "vault" })).toThrow(/VAULT_ADDR[\s\S]*VAULT_TOKEN/);
  });
});
