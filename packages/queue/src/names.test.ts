import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { describe, expect, inject, it } from "vitest";
import { deploymentKeyPattern, keys, queuePrefix, tagged, tenantPrefix } from "./names.js";

/** Redis Cluster's key hash tag: the text between the first '{' and the next '}', when not empty. */
function hashTag(key: string): string {
  const open = key.indexOf("{");
  const close = open < 0 ? -1 : key.indexOf("}", open + 1);
  return close > open + 1 ? key.slice(open + 1, close) : key;
}

describe("key families", () => {
  it("extends the prefix's hash tag with the family", () => {
    expect(tagged("{citadel}", "q:heavy")).toBe("{citadel:q:heavy}");
    expect(tagged("app:{citadel}:x", "t:acme")).toBe("app:{citadel:t:acme}:x");
    expect(queuePrefix("{citadel}", "ocr-cls")).toBe("{citadel:q:ocr-cls}");
    expect(tenantPrefix("{citadel}", "acme")).toBe("{citadel:t:acme}");
  });

  it("gives a prefix without a tag the family as its tag", () => {
    expect(tagged("citadel", "q:heavy")).toBe("citadel:{q:heavy}");
    expect(tagged("{}citadel", "q:heavy")).toBe("{}citadel:{q:heavy}");
  });

  it("puts different models, tenants and the deployment's own keys under different tags", () => {
    const tags = new Set(
      [queuePrefix("{citadel}", "a"), queuePrefix("{citadel}", "b"), tenantPrefix("{citadel}", "a"), "{citadel}"].map(
        (p) => hashTag(`${p}:x`),
      ),
    );
    expect(tags.size).toBe(4);
  });

  it("refuses a family that would end the tag early", () => {
    expect(() => tagged("{citadel}", "q:a}b")).toThrow(/braces/);
  });
});

describe("deploymentKeyPattern", () => {
  it("matches every family's keys of the deployment and no other deployment's (SCAN on a real Redis)", async () => {
    const redis = new Redis(inject("redisUrl"));
    try {
      const run = randomBytes(4).toString("hex");
      const mine = `{pat-${run}}`;
      const other = `{pat-${run}x}`;
      const ours = [
        `${mine}:registry:models`,
        keys.job(mine, "m", "m.abc"),
        keys.tenantQueuedJobs(mine, "acme"),
        keys.outbox(mine, "m"),
      ];
      const theirs = [`${other}:registry:models`, keys.job(other, "m", "m.abc")];
      for (const k of [...ours, ...theirs]) await redis.set(k, "1");
      const found: string[] = [];
      let cursor = "0";
      do {
        const [next, page] = await redis.scan(cursor, "MATCH", deploymentKeyPattern(mine), "COUNT", 1000);
        cursor = next;
        found.push(...page);
      } while (cursor !== "0");
      expect(found.sort()).toEqual([...ours].sort());
      await redis.del(...ours, ...theirs);
    } finally {
      redis.disconnect();
    }
  });

  it("escapes glob characters and covers a prefix without a tag", () => {
    expect(deploymentKeyPattern("{a*b}")).toBe("{a\\*b[:}]*");
    expect(deploymentKeyPattern("citadel")).toBe("citadel:*");
  });
});
