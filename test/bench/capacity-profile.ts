/**
 * Where one Citadel worker's main thread spends its time on a no-op model: pre-fills
 * `jobs` jobs through the API's bulk route, starts one worker with `--cpu-prof`, lets it
 * drain the queue, stops it, and prints the functions with the most self time.
 *
 *   node --conditions=@citadel/source --import tsx test/bench/capacity-profile.ts [jobs] [profile dir]
 *
 * NO_PROFILE=1 runs it without the profiler (the rate alone); NODE_ARGS="…" starts the
 * worker with those Node flags instead (e.g. --trace-gc, whose lines go to its log);
 * APP_FORM=dist starts the built worker (run `pnpm build` first).
 */
import path from "node:path";
import { buildIdentityModel } from "@citadel/onnx";
import { queueName, queuePrefix } from "@citadel/queue";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import {
  apiEnv,
  b64,
  Client,
  freePort,
  randomInput,
  say,
  setupFleet,
  sleep,
  startOwnRedis,
  startProc,
  threadCpuByName,
  workerEnv,
} from "./harness.js";
import { printTopSelfTime, profiledNodeArgs, profiledNodeOptions } from "./profile-summary.js";

const jobs = Number(process.argv[2] ?? 20_000);
const dir = path.resolve(process.argv[3] ?? "/tmp/citadel-capacity-profile");
const own = await startOwnRedis();
const fleet = await setupFleet({ redisUrl: own.url, prefix: "{bench}" });
await fleet.publish(buildIdentityModel("float32", ["N", 16]), {
  name: "noop",
  version: "1",
  spec: { maxBatch: 64, maxQueueDelayMs: 0, executionProviders: ["cpu"], inputs: { x: { range: [-1, 1] } } },
});
const apiPort = await freePort();
const api = await startProc(
  "api",
  "api",
  apiEnv(fleet.env, apiPort, { QUEUE_TTL_MS: "600000" }),
  fleet.logDir,
  apiPort,
);
const client = new Client(api.url, fleet.apiKey);
const body = JSON.stringify({
  jobs: Array.from({ length: 500 }, (_, i) => ({
    model: "noop",
    inputs: { x: { dtype: "float32", shape: [1, 16], data: b64(randomInput(16, i)) } },
  })),
});
for (let left = jobs; left > 0; left -= 500) await client.bulk(body);
const connection = new Redis(own.url);
const queue = new Queue(queueName("noop"), { connection, prefix: queuePrefix("{bench}", "noop") });
say(`profile: ${await queue.count()} jobs queued; starting one worker with --cpu-prof (${dir})`);
await connection.config("RESETSTAT");
const port = await freePort();
const worker = await startProc(
  "worker",
  "worker-profile",
  workerEnv(fleet.env, port, "profile", { WORKER_MODELS: "noop" }),
  fleet.logDir,
  port,
  profiledNodeOptions(dir),
);
const unsettled = async () =>
  Object.values(await queue.getJobCounts("wait", "active", "prioritized")).reduce((a, n) => a + n, 0);
// The rate between 5% and 95% settled (start-up and the tail left out), as the bench measures it.
while ((await unsettled()) > jobs * 0.95) await sleep(5);
const t = performance.now();
const threads0 = threadCpuByName(worker.pid);
while ((await unsettled()) > jobs * 0.05) await sleep(5);
const s = (performance.now() - t) / 1000;
const threads1 = threadCpuByName(worker.pid);
say(`profile: 90% of ${jobs} jobs settled in ${s.toFixed(2)} s: ${((jobs * 0.9) / s).toFixed(0)} jobs/s`);
// Whose CPU a job costs: the main thread, the runner (a worker thread), V8's GC helpers, libuv's pool.
const perThread = [...threads1]
  .map(([name, ms]) => [name, (ms - (threads0.get(name) ?? 0)) / (jobs * 0.9)] as const)
  .filter(([, ms]) => ms > 0.0005)
  .sort((a, b) => b[1] - a[1]);
say(`profile: worker CPU ms per job by thread: ${perThread.map(([n, ms]) => `${n} ${ms.toFixed(4)}`).join(", ")}`);
while ((await unsettled()) > 0) await sleep(20);
// Calls per job of each command the drain sent (the polling above adds a few LLENs/ZCARDs).
const stats = String(await connection.info("commandstats"));
const calls = [...stats.matchAll(/^cmdstat_(\w+(?:\|\w+)?):calls=(\d+)/gm)]
  .map(([, cmd, n]) => [cmd, Number(n) / jobs] as const)
  .filter(([, perJob]) => perJob >= 0.001)
  .sort((a, b) => b[1] - a[1]);
say(`profile: Redis calls per job: ${calls.map(([c, n]) => `${c} ${n.toFixed(3)}`).join(", ")}`);
await worker.stop();
await api.stop();
await queue.close();
// BullMQ leaves a connection it was given open: without this the script never exits.
connection.disconnect();
await fleet.close();
await own.close();

if (profiledNodeArgs(dir).includes("--cpu-prof")) printTopSelfTime(dir, worker.pid);
