/**
 * Where the API and the worker spend their main threads' time on the bench's 16-sample
 * row: PaddleOCR cls, jobs of 16 samples (1.7 MB) sent as binary bodies by `clients`
 * closed loops for `seconds`, both processes under `--cpu-prof`; prints jobs/s, CPU per
 * job per process, the worker's CPU by thread beside its time inside session.run (more
 * wall time there than runner CPU: the runner waited for a core), and each main
 * thread's functions with the most self time.
 *
 *   node --conditions=@citadel/source --import tsx test/bench/multi-profile.ts [seconds] [clients] [profile dir]
 *
 * NO_PROFILE, NODE_ARGS and APP_FORM=dist as in capacity-profile.ts; OCR_RUN_BATCH=4 seals
 * the model with runBatch 4 (runs of 4 samples).
 */
import { rmSync } from "node:fs";
import path from "node:path";
import { Client, cpuMsOf, randomInput, redisPidOf, rssOf, say, scrapeMetric, threadCpuByName } from "./harness.js";
import { startOcrFleet } from "./ocr-fleet.js";
import { printTopSelfTime, profiledNodeOptions } from "./profile-summary.js";
import { binaryBody, stackSamples } from "./wire.js";

const seconds = Number(process.argv[2] ?? 15);
const clients = Number(process.argv[3] ?? 3);
const dir = path.resolve(process.argv[4] ?? "/tmp/citadel-multi-profile");
const profile = profiledNodeOptions(dir);
rmSync(dir, { recursive: true, force: true });
const SAMPLES = 16;
const PER = 3 * 48 * 192;

const { fleet, api, worker, close } = await startOcrFleet("profile", profile);
const redisPid = await redisPidOf(fleet.redis);
const pool = Array.from({ length: 64 }, (_, i) => randomInput(PER, 1000 + i));
const bodies = Array.from({ length: 8 }, (_, i) =>
  binaryBody("ocr-cls", [{ name: "x", shape: [SAMPLES, 3, 48, 192], data: stackSamples(pool, i * SAMPLES, SAMPLES) }]),
);
const client = new Client(api.url, fleet.apiKey);
let done = 0;
let failed = 0;
const loop = async (c: number, until: number, count: boolean) => {
  for (let i = c; performance.now() < until; i += clients) {
    const b = bodies[i % bodies.length] as (typeof bodies)[number];
    const r = await client.submitAndWait(b.body, { headerLength: b.headerLength });
    if (!count) continue;
    if (r.view?.status === "completed") done++;
    else failed++;
  }
};
const warm = performance.now() + 3000;
await Promise.all(Array.from({ length: clients }, (_, c) => loop(c, warm, false)));
const cpu0 = { api: cpuMsOf(api.pid), worker: cpuMsOf(worker.pid), redis: cpuMsOf(redisPid), me: process.cpuUsage() };
const workerThreads0 = threadCpuByName(worker.pid);
// Time inside session.run (the worker's own histogram), to set beside the runner thread's CPU.
const metrics = new URL("/metrics", worker.url).href;
const inRunMs = async () =>
  ((await scrapeMetric(metrics, "citadel_inference_compute_duration_seconds_sum")) ?? NaN) * 1000;
const inRun0 = await inRunMs();
const t0 = performance.now();
await Promise.all(Array.from({ length: clients }, (_, c) => loop(c, t0 + seconds * 1000, true)));
const s = (performance.now() - t0) / 1000;
const inRun = (await inRunMs()) - inRun0;
const me = process.cpuUsage(cpu0.me);
const workerThreads = [...threadCpuByName(worker.pid)].map(
  ([name, ms]) => [name, ms - (workerThreads0.get(name) ?? 0)] as const,
);
const per = (ms: number) => (ms / done).toFixed(2);
say(
  `multi: ${done} jobs (${failed} failed) in ${s.toFixed(1)} s: ${(done / s).toFixed(1)} jobs/s, ` +
    `${((done * SAMPLES) / s).toFixed(0)} samples/s; CPU ms/job: api ${per(cpuMsOf(api.pid) - cpu0.api)}, ` +
    `worker ${per(cpuMsOf(worker.pid) - cpu0.worker)}, redis ${per(cpuMsOf(redisPid) - cpu0.redis)}, ` +
    `client ${per((me.user + me.system) / 1000)}; RSS MB: api ${(rssOf(api.pid) / 2 ** 20).toFixed(0)}, ` +
    `worker ${(rssOf(worker.pid) / 2 ** 20).toFixed(0)}`,
);
// The worker's threads: main, the runner thread, onnxruntime's, libuv's pool, V8's helpers.
say(
  `worker threads, CPU ms/job: ${workerThreads
    .filter(([, ms]) => ms / done >= 0.05)
    .sort((a, b) => b[1] - a[1])
    .map(([name, ms]) => `${name} ${(ms / done).toFixed(2)}`)
    .join(", ")}; inside session.run ${(inRun / done).toFixed(2)} ms/job (wall)`,
);
await close();
if (profile.nodeArgs.includes("--cpu-prof")) {
  printTopSelfTime(dir, api.pid, 30);
  printTopSelfTime(dir, worker.pid, 30);
}
