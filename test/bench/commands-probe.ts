/**
 * Redis commands of Citadel jobs, one by one: starts a private redis-server, the API and
 * one worker on the identity model, submits jobs one at a time with POST ?wait, and
 * prints the commands per job (INFO commandstats) and the MONITOR trace of the last one.
 *
 *   node --conditions=@citadel/source --import tsx test/bench/commands-probe.ts [jobs] [concurrency]
 */
import { buildIdentityModel } from "@citadel/onnx";
import { Redis } from "ioredis";
import { monitorRedis } from "../support/redis-monitor.js";
import { startCitadelWorkers } from "./contenders.js";
import {
  apiEnv,
  Client,
  commandDelta,
  commandStats,
  freePort,
  randomInput,
  say,
  setupFleet,
  startOwnRedis,
  startProc,
} from "./harness.js";
import { commandsByFamily } from "./shard-model.js";
import { prepareBody } from "./wire.js";

const jobs = Number(process.argv[2] ?? 200);
/** Clients submitting at once (1: one job at a time; more: batches form, as under load). */
const concurrency = Number(process.argv[3] ?? 1);
const own = await startOwnRedis();
const admin = new Redis(own.url);
const fleet = await setupFleet({ redisUrl: own.url, prefix: "{bench}" });
await fleet.publish(buildIdentityModel("float32", ["N", 16]), {
  name: "tiny",
  version: "1",
  spec: { maxBatch: 64, maxQueueDelayMs: 0, executionProviders: ["cpu"], inputs: { x: { range: [-1, 1] } } },
});
const apiPort = await freePort();
const api = await startProc("api", "api", apiEnv(fleet.env, apiPort, {}), fleet.logDir, apiPort);
const workers = await startCitadelWorkers(fleet, "tiny", 1, 1, "probe");
const client = new Client(api.url, fleet.apiKey);
const body = prepareBody("binary", "tiny", [{ name: "x", shape: [1, 16], data: randomInput(16, 1) }]);
const one = async () => {
  if (body.wire !== "binary") throw new Error("binary");
  const r = await client.submitAndWait(body.body, { headerLength: body.headerLength });
  if (r.view?.status !== "completed") throw new Error(`job: ${JSON.stringify(r)}`);
};
for (let i = 0; i < 20; i++) await one();
// Past the API's event-listener warm-up (waiters read the job back while it is young).
await new Promise((r) => setTimeout(r, 5500));
const a = await commandStats(admin);
let next = 0;
await Promise.all(
  Array.from({ length: concurrency }, async () => {
    while (next++ < jobs) await one();
  }),
);
await new Promise((r) => setTimeout(r, 500));
const b = await commandStats(admin);
const d = commandDelta(a, b);
say(`commands per job (${concurrency} client(s), POST ?wait): ${(d.all / jobs).toFixed(1)}`);
for (const [k, v] of Object.entries(d.byCommand).sort((x, y) => y[1] - x[1]))
  say(`  ${k.padEnd(28)} ${(v / jobs).toFixed(2)}`);
// One job under MONITOR.
const lines: string[] = [];
const raw: { source: string; args: string[] }[] = [];
const mon = await monitorRedis(own.url, ({ args, source }) => {
  lines.push(`${source.padEnd(24)} ${args.map((x) => (x.length > 60 ? `${x.slice(0, 60)}…` : x)).join(" ")}`);
  raw.push({ source, args });
});
await new Promise((r) => setTimeout(r, 300));
lines.length = 0;
raw.length = 0;
await one();
await new Promise((r) => setTimeout(r, 300));
mon.close();
say(`MONITOR of one job (${lines.length} lines):`);
for (const l of lines) say(`  ${l}`);
// The slots each family of keys would hash to on a cluster (docs/capacity.md).
say(`that job's commands by key family (Lua's inner ones included): ${JSON.stringify(commandsByFamily(raw, "bench"))}`);
for (const w of workers) await w.stop();
await api.stop();
await fleet.close();
admin.disconnect();
await own.close();
