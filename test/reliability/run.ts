/**
 * The reliability suite, full form: faults injected into real processes, then every
 * accepted job accounted for.
 *
 *   npm run reliability                      # full (soak of 100,000 jobs; ~10 min)
 *   node --conditions=@citadel/source --import tsx test/reliability/run.ts [--short] [--only kill,redis,vault,api,failover,soak] [--soak-jobs N]
 *
 * Uses a redis-server of its own (AOF, appendfsync always) on a free 127.0.0.1 port,
 * never the shared one: the Redis scenario kills and restarts it. The failover scenario
 * runs on a Redis Cluster of its own (3 masters, 3 replicas; failover.ts), SKIPPED when
 * redis-server/redis-cli are missing. Duplicates are counted
 * from Redis's MONITOR feed (witness.ts), not from Citadel's audit stream.
 * Prints a table (fault, submitted, accepted, completed, failed by code, lost,
 * duplicated, checks) and a final JSON line; exits 1 when anything was lost or
 * duplicated or a check failed.
 */
import { haveRedisServer, say, startOwnRedis } from "../bench/harness.js";
import { ensureRedisBinaries } from "../support/redis-cluster.js";
import { clusterFailover } from "./failover.js";
import {
  apiRestart,
  formatTable,
  type Row,
  redisRestart,
  rowPassed,
  type ScenarioEnv,
  soak,
  vaultDown,
  workerKills,
} from "./scenarios.js";
import { RedisWitness } from "./witness.js";

interface Options {
  short: boolean;
  only: string[];
  soakJobs: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { short: false, only: ["kill", "redis", "vault", "api", "failover", "soak"], soakJobs: 0 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--short") o.short = true;
    else if (a === "--only") o.only = (argv[++i] ?? "").split(",");
    else if (a === "--soak-jobs") o.soakJobs = Number(argv[++i]);
    else throw new Error(`unknown argument ${a}`);
  }
  if (o.soakJobs === 0) o.soakJobs = o.short ? 2000 : 100_000;
  return o;
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  if (!haveRedisServer()) {
    say("reliability: needs a redis-server binary (the suite kills and restarts a Redis of its own)");
    return 2;
  }
  const redis = await startOwnRedis({ aof: true });
  say(`reliability: ${o.short ? "short" : "full"} form; own redis-server (AOF) at ${redis.url}`);
  const witness = await RedisWitness.attach(redis);
  const env: ScenarioEnv = { redis, witness, short: o.short };
  const rows: Row[] = [];
  const started = Date.now();
  const scenarios: [string, () => Promise<Row[]>][] = [
    ["kill", async () => [await workerKills(env)]],
    ["redis", async () => [await redisRestart(env)]],
    ["vault", async () => [await vaultDown(env)]],
    ["api", async () => [await apiRestart(env)]],
    [
      "failover",
      async () => {
        const missing = ensureRedisBinaries(say);
        if (missing) {
          say(`reliability: failover SKIPPED: ${missing}`);
          return [];
        }
        const report = await clusterFailover({ short: o.short });
        say(`reliability: failover figures ${JSON.stringify(report.figures)}`);
        return report.rows;
      },
    ],
    [
      "soak",
      async () => [
        await soak(env, o.soakJobs, (s) =>
          say(
            `  soak t=${s.t}s done=${s.done} depth=${s.depth} worker RSS ${s.workerRssMb.join("/")} MB api ${s.apiRssMb} MB redis ${s.redisMb} MB`,
          ),
        ),
      ],
    ],
  ];
  try {
    for (const [key, run] of scenarios) {
      if (!o.only.includes(key)) continue;
      const t0 = Date.now();
      say(`reliability: ${key} …`);
      try {
        for (const row of await run()) {
          rows.push(row);
          say(
            `reliability: ${key}: ${row.fault}: ${row.accepted} accepted, ${row.completed} completed, lost ${row.lost}, duplicated ${row.duplicated} (${Math.round((Date.now() - t0) / 1000)} s)`,
          );
        }
      } catch (err) {
        say(`reliability: ${key} crashed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
        rows.push({
          fault: key,
          submitted: 0,
          accepted: 0,
          completed: 0,
          failed: {},
          lost: 0,
          duplicated: 0,
          checks: [{ name: "scenario ran", ok: false, detail: err instanceof Error ? err.message : String(err) }],
          notes: [],
        });
      }
    }
  } finally {
    await witness.close();
    await redis.close();
  }
  process.stdout.write(`\n${formatTable(rows)}\n`);
  const ok = rows.every(rowPassed);
  process.stdout.write(
    `${JSON.stringify({
      reliability: o.short ? "short" : "full",
      ok,
      seconds: Math.round((Date.now() - started) / 1000),
      rows: rows.map(({ fault, submitted, accepted, completed, failed, lost, duplicated, checks }) => ({
        fault,
        submitted,
        accepted,
        completed,
        failed,
        lost,
        duplicated,
        checksFailed: checks.filter((c) => !c.ok).map((c) => c.name),
      })),
    })}\n`,
  );
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`reliability failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
