import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cliArgs } from "@citadel/cli/fleet";
import { TenantStore } from "@citadel/tenants";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deletePrefix, redisUrl } from "../support/fleet.js";

// Issue 10 point 2: high priority is a tenant right an operator grants with the CLI.

const prefix = `{cli-tenants-${randomBytes(4).toString("hex")}}`;
let redis: Redis;

function citadel(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, [...cliArgs(), ...args], {
    encoding: "utf8",
    env: { PATH: process.env.PATH ?? "", REDIS_URL: redisUrl(), CITADEL_PREFIX: prefix },
  });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

beforeAll(() => {
  redis = new Redis(redisUrl());
});
afterAll(async () => {
  await deletePrefix(redis, prefix);
  await redis.quit();
});

describe("citadel tenants add", () => {
  it("grants high priority only with --allow-high-priority, and takes it away when re-added without", async () => {
    const store = new TenantStore(redis, prefix);
    const vip = citadel("tenants", "add", "vip", "--models", "*", "--allow-high-priority");
    expect(vip.code, vip.err).toBe(0);
    expect(JSON.parse(vip.out)).toMatchObject({ id: "vip", allowHighPriority: true });
    expect(citadel("tenants", "add", "plain").code).toBe(0);
    expect((await store.get("vip"))?.allowHighPriority).toBe(true);
    expect((await store.get("plain"))?.allowHighPriority).toBe(false);
    const list = citadel("tenants", "list").out;
    expect(list).toMatch(/^vip .*high-priority/m);
    expect(list).not.toMatch(/^plain .*high-priority/m);
    expect(citadel("tenants", "add", "vip", "--models", "*").code).toBe(0);
    expect((await store.get("vip"))?.allowHighPriority).toBe(false);
  });
});
