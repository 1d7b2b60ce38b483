/**
 * The reliability suite's short form (CI): the same scenarios as
 * test/reliability/run.ts with fewer jobs. Faults go into real processes (API and
 * workers as child processes, a redis-server of the test's own with AOF, the
 * Vault-API test server); every accepted job must end exactly once, counted from what
 * Redis itself executed (its MONITOR feed, test/reliability/witness.ts) and from the
 * clients' own record. The failover scenario runs on a local Redis Cluster of its own
 * (test/reliability/failover.ts); SKIPPED without redis-server/redis-cli.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { haveRedisServer, type OwnRedis, startOwnRedis } from "../bench/harness.js";
import { clusterFailover } from "../reliability/failover.js";
import {
  apiRestart,
  formatTable,
  type Row,
  redisRestart,
  type ScenarioEnv,
  soak,
  vaultDown,
  workerKills,
} from "../reliability/scenarios.js";
import { RedisWitness } from "../reliability/witness.js";
import { ensureRedisBinaries } from "../support/redis-cluster.js";

const noCluster = ensureRedisBinaries();
if (noCluster) process.stderr.write(`reliability-short: failover SKIPPED: ${noCluster}\n`);

let redis: OwnRedis;
let witness: RedisWitness;
let env: ScenarioEnv;
const rows: Row[] = [];

beforeAll(async () => {
  // The Redis scenario kills and restarts Redis: never the shared one.
  expect(haveRedisServer(), "redis-server must be installed (scripts/redis.mjs installs it)").toBe(true);
  redis = await startOwnRedis({ aof: true });
  witness = await RedisWitness.attach(redis);
  env = { redis, witness, short: true };
});

afterAll(async () => {
  await witness?.close();
  await redis?.close();
  if (rows.length) process.stderr.write(`\n${formatTable(rows)}\n`);
});

function expectClean(row: Row): void {
  rows.push(row);
  const failed = row.checks.filter((c) => !c.ok).map((c) => `${c.name} ${c.detail ?? ""}`);
  expect({ lost: row.lost, duplicated: row.duplicated, failedChecks: failed }).toEqual({
    lost: 0,
    duplicated: 0,
    failedChecks: [],
  });
  expect(row.accepted).toBeGreaterThan(0);
}

describe("reliability under faults (short form)", () => {
  it("a worker SIGKILLed mid-batch, repeatedly: every job once, outputs unchanged", { timeout: 120_000 }, async () => {
    expectClean(await workerKills(env));
  });

  it("Redis killed and restarted (AOF): 503 while down, nothing lost", { timeout: 180_000 }, async () => {
    expectClean(await redisRestart(env));
  });

  it("Vault down, then sealed: loaded models serve, loads fail VAULT_UNAVAILABLE, then recover", {
    timeout: 90_000,
  }, async () => {
    const row = await vaultDown(env);
    expectClean(row);
    expect(Object.keys(row.failed)).toEqual(["VAULT_UNAVAILABLE"]);
  });

  it("the API killed during bulk submits: idempotency keys prevent duplicates", { timeout: 120_000 }, async () => {
    expectClean(await apiRestart(env));
  });

  it.skipIf(noCluster !== null)(
    "a Redis Cluster master SIGKILLed under load, then a slot without a master: 503 meanwhile, every acknowledged job that vanished is recovered by a retry with its Idempotency-Key",
    { timeout: 240_000 },
    async () => {
      const { rows } = await clusterFailover({ short: true });
      expect(rows.map((r) => r.fault)).toHaveLength(2);
      for (const row of rows) expectClean(row);
    },
  );

  it("a soak of 2,000 jobs: every job completes, memory and queue depth bounded", { timeout: 120_000 }, async () => {
    const row = await soak(env, 2000);
    expectClean(row);
    expect(row.completed).toBe(2000);
  });
});
