/**
 * A job's phases at a steady rate: PaddleOCR cls, one sample per job, binary bodies sent
 * in an open loop (job i at t0 + i/rate, whatever the earlier ones do) to one API and one
 * worker; prints p50/p90/p99/max of submit (sent → created), queue (created → started),
 * worker (started → finished, less inference), reply (finished → answer received) and
 * their sum less inference, and the CPU per job of the API, the worker and Redis.
 *
 *   node --conditions=@citadel/source --import tsx test/bench/latency-profile.ts [rate] [seconds]
 *
 * NODE_ARGS and APP_FORM=dist as in capacity-profile.ts; PROFILE_MODEL=heavy serves the
 * bench's heavy conv net (x[1,3,64,64] per job) instead, PROFILE_MODEL=light the same net with
 * one filter in one layer (same input and output, almost no compute: what a GPU node's CPU sees).
 */
import { Client, cpuMsOf, percentile, type ResultView, randomInput, redisPidOf, say, sleep } from "./harness.js";
import { startOcrFleet } from "./ocr-fleet.js";
import { binaryBody } from "./wire.js";

interface Timed {
  sent: number;
  received: number;
  view: ResultView;
}

const rate = Number(process.argv[2] ?? 80);
const seconds = Number(process.argv[3] ?? 10);
const heavy = process.env.PROFILE_MODEL === "heavy" || process.env.PROFILE_MODEL === "light";
const SHAPE = heavy ? [1, 3, 64, 64] : [1, 3, 48, 192];
const PER = SHAPE.reduce((a, b) => a * b, 1);
const form = process.env.APP_FORM === "dist" ? "dist" : "source";
const nodeArgs = process.env.NODE_ARGS ? process.env.NODE_ARGS.split(" ") : [];

const { fleet, api, worker, close } = await startOcrFleet("latency", {
  nodeArgs,
  form,
  model: process.env.PROFILE_MODEL === "light" ? "light" : heavy ? "heavy" : "ocr",
});
const redisPid = await redisPidOf(fleet.redis);
const bodies = Array.from({ length: 64 }, (_, i) =>
  binaryBody("ocr-cls", [{ name: "x", shape: SHAPE, data: randomInput(PER, 2000 + i) }]),
);
const client = new Client(api.url, fleet.apiKey);

/** An open loop: job i is sent at t0 + i/rate whatever the earlier ones do. */
async function openLoop(ms: number): Promise<Timed[]> {
  const out: Timed[] = [];
  const pending: Promise<void>[] = [];
  const t0 = performance.now();
  for (let i = 0; t0 + (i * 1000) / rate < t0 + ms; i++) {
    const wait = t0 + (i * 1000) / rate - performance.now();
    if (wait > 0) await sleep(wait);
    const b = bodies[i % bodies.length] as (typeof bodies)[number];
    const sent = Date.now();
    pending.push(
      client.submitAndWait(b.body, { headerLength: b.headerLength }).then((r) => {
        if (r.view?.status === "completed") out.push({ sent, received: Date.now(), view: r.view });
      }),
    );
  }
  await Promise.all(pending);
  return out;
}

await openLoop(3000);
const cpu0 = [cpuMsOf(api.pid), cpuMsOf(worker.pid), cpuMsOf(redisPid)];
const jobs = await openLoop(seconds * 1000);
const cpu = [cpuMsOf(api.pid), cpuMsOf(worker.pid), cpuMsOf(redisPid)].map(
  (ms, i) => (ms - (cpu0[i] ?? 0)) / jobs.length,
);
await close();

const phases: Record<string, number[]> = { submit: [], queue: [], worker: [], reply: [], overhead: [] };
/** Each job's phases in one row, to see which phase the slowest jobs lost their time in. */
const rows: { at: number; phases: number[]; overhead: number; inference: number; batch: number }[] = [];
for (const j of jobs) {
  const created = Date.parse(j.view.createdAt ?? "");
  const started = Date.parse(j.view.startedAt ?? "");
  const finished = Date.parse(j.view.finishedAt ?? "");
  const r = j.view.result;
  if (!r || Number.isNaN(created) || Number.isNaN(started) || Number.isNaN(finished)) continue;
  phases.submit?.push(created - j.sent);
  phases.queue?.push(started - created);
  phases.worker?.push(finished - started - r.inferenceMs);
  phases.reply?.push(j.received - finished);
  phases.overhead?.push(j.received - j.sent - r.inferenceMs);
  rows.push({
    at: j.sent,
    phases: [created - j.sent, started - created, finished - started - r.inferenceMs, j.received - finished],
    overhead: j.received - j.sent - r.inferenceMs,
    inference: r.inferenceMs,
    batch: r.batchSize,
  });
}
say(`latency: ${jobs.length} jobs at ${rate} jobs/s for ${seconds} s (${form}); ms per phase:`);
say("  phase        p50     p90     p99     max");
for (const [name, xs] of Object.entries(phases)) {
  const sorted = [...xs].sort((a, b) => a - b);
  // No sample prints "-", never a made-up 0.
  const at = (p: number) => (sorted.length ? percentile(sorted, p).toFixed(1) : "-");
  const row = [50, 90, 99, 100].map((p) => at(p).padStart(7)).join(" ");
  say(`  ${name.padEnd(9)} ${row}`);
}
// The slowest 2% by end to end − inference: where their time went, and when (s after the first).
const slowest = [...rows].sort((a, b) => b.overhead - a.overhead);
const t0 = Math.min(...rows.map((r) => r.at));
say(`  slowest 2%: at s (after ${t0}, ms since the epoch), submit / queue / worker / reply, inference (batch)`);
for (const r of slowest.slice(0, Math.max(1, Math.ceil(rows.length / 50))))
  say(
    `    ${((r.at - t0) / 1000).toFixed(2).padStart(6)}  ${r.phases.map((x) => x.toFixed(1)).join(" / ")}, ${r.inference.toFixed(1)} (${r.batch})`,
  );
const [apiMs, workerMs, redisMs] = cpu.map((ms) => ms.toFixed(2));
say(`CPU ms per job: api ${apiMs}, worker (main and runner) ${workerMs}, redis ${redisMs}`);
