import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { tempDir } from "../../../test/support/temp-dirs.js";
import {
  AuditEnv,
  auditKeyProblem,
  BoolEnv,
  CommonEnv,
  ConfigError,
  KeyEnv,
  parseEnv,
  readKeyFile,
  refineAuditEnv,
  refineCommonEnv,
  refineKeyEnv,
} from "./index.js";

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

  it("on a Redis Cluster, wants a prefix with a hash tag (the scripts' keys must share a slot)", () => {
    const Env = CommonEnv.superRefine(refineCommonEnv);
    const problems = (env: Record<string, string>) =>
      Env.safeParse(env).error?.issues.map((i) => `${i.path.join(".")}: ${i.message}`) ?? [];
    const clusters: Record<string, string>[] = [
      { REDIS_URL: "redis+cluster://a:7000,b:7001" },
      { REDIS_CLUSTER_NODES: "a:7000" },
    ];
    for (const cluster of clusters) {
      expect(problems({ ...cluster })).toEqual([]); // the default, {citadel}
      expect(problems({ ...cluster, CITADEL_PREFIX: "acme{citadel}" })).toEqual([]);
      for (const prefix of ["citadel", "{}citadel", "citadel}{", "{citadel"]) {
        expect(problems({ ...cluster, CITADEL_PREFIX: prefix }), prefix).toEqual([
          expect.stringMatching(/^CITADEL_PREFIX: .*hash tag/),
        ]);
      }
    }
    // One Redis has no slots: any prefix does.
    expect(problems({ CITADEL_PREFIX: "citadel" })).toEqual([]);
  });

  it("takes a single Redis or a Redis Cluster, by URL or by REDIS_CLUSTER_NODES", () => {
    const ok = (env: Record<string, string>) => CommonEnv.safeParse(env).success;
    expect(ok({ REDIS_URL: "redis://u:p@redis:6379/0" })).toBe(true);
    expect(ok({ REDIS_URL: "rediss://redis.example:6380" })).toBe(true);
    expect(ok({ REDIS_URL: "redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002" })).toBe(true);
    expect(ok({ REDIS_URL: "rediss+cluster://r1.example:6379" })).toBe(true);
    expect(ok({ REDIS_URL: "redis://u:p@x:1", REDIS_CLUSTER_NODES: "a:7000, b:7001" })).toBe(true);
    expect(CommonEnv.parse({ REDIS_CLUSTER_NODES: "a:7000, b:7001," }).REDIS_CLUSTER_NODES).toEqual([
      "a:7000",
      "b:7001",
    ]);
    expect(CommonEnv.parse({}).REDIS_CLUSTER_NODES).toBeUndefined();
    expect(ok({ REDIS_URL: "http://redis:6379" })).toBe(false);
    expect(ok({ REDIS_URL: "redis+cluster://u:p@a:7000,b:99999" })).toBe(false);
    expect(ok({ REDIS_URL: "redis+cluster://u:p@a:7000,,b c:1" })).toBe(false);
    expect(ok({ REDIS_CLUSTER_NODES: "a:7000,b:port" })).toBe(false);
    expect(ok({ REDIS_CLUSTER_NODES: " , " })).toBe(false);
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

describe("audit key files", () => {
  const dir = tempDir("config");
  const file = (name: string, text: string) => {
    const p = path.join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  const Env = CommonEnv.extend(KeyEnv.shape).extend(AuditEnv.shape).superRefine(refineAuditEnv);

  it("reads base64 of at least 32 bytes, whitespace ignored", () => {
    const key = randomBytes(32);
    expect(readKeyFile(file("ok.key", `${key.toString("base64")}\n`)).equals(key)).toBe(true);
  });

  it("refuses a short, non-base64 or missing key file without echoing it", () => {
    const short = randomBytes(16).toString("base64");
    expect(() => readKeyFile(file("short.key", short))).toThrow(/holds a 16-byte key; at least 32 bytes/);
    expect(() => readKeyFile(file("text.key", "not a key!"))).toThrow(/must hold base64/);
    expect(() => readKeyFile(path.join(dir, "absent.key"))).toThrow(/cannot read .*absent\.key \(ENOENT\)/);
    const problem = auditKeyProblem({ AUDIT_KEY_FILE: path.join(dir, "short.key"), LOCAL_KEYRING: "" });
    expect(problem).toMatch(/^AUDIT_KEY_FILE: .*short\.key holds a 16-byte key/);
    expect(problem).not.toContain(short);
  });

  it("requires a key file in production (the schema reads no file), and a dev keyring to derive one from otherwise", () => {
    expect(() => parseEnv(Env, { NODE_ENV: "production" })).toThrow(/AUDIT_KEY_FILE: required in production/);
    // The schema only checks presence: rendered manifests are checked where the file is not.
    const elsewhere = "/run/nowhere/audit-key";
    expect(parseEnv(Env, { NODE_ENV: "production", AUDIT_KEY_FILE: elsewhere }).AUDIT_KEY_FILE).toBe(elsewhere);
    expect(auditKeyProblem({ AUDIT_KEY_FILE: elsewhere, LOCAL_KEYRING: "" })).toMatch(/cannot read .*\(ENOENT\)/);
    expect(auditKeyProblem({ LOCAL_KEYRING: path.join(dir, "none.json") })).toMatch(
      /AUDIT_KEY_FILE: not set, and no dev keyring/,
    );
    expect(auditKeyProblem({ LOCAL_KEYRING: file("keyring.json", "{}") })).toBeNull();
    expect(
      auditKeyProblem({ AUDIT_KEY_FILE: file("prod.key", randomBytes(32).toString("base64")), LOCAL_KEYRING: "" }),
    ).toBeNull();
  });
});
