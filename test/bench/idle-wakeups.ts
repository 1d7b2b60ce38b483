/**
 * What an idle fleet costs: one API and one worker serving PaddleOCR cls with nothing
 * to do, measured over `seconds` after they settle. Prints each process's CPU per
 * second and its wake-ups per second (voluntary context switches of all its threads:
 * every timer or socket that wakes it). A wake-up is dear on a paravirtualised VM, and
 * at light load a process's periodic timers are wake-ups its jobs pay beside their own.
 *
 *   node --conditions=@citadel/source --import tsx test/bench/idle-wakeups.ts [seconds]
 *
 * APP_FORM=dist runs the built apps (as the bench does).
 */
import { readdirSync, readFileSync } from "node:fs";
import { cpuMsOf, redisPidOf, say, sleep } from "./harness.js";
import { startOcrFleet } from "./ocr-fleet.js";

const seconds = Number(process.argv[2] ?? 20);
const form = process.env.APP_FORM === "dist" ? "dist" : "source";

/** Voluntary context switches of every thread of `pid` (a thread gone since is not counted). */
function wakeUps(pid: number): number {
  let n = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const status = readFileSync(`/proc/${pid}/task/${tid}/status`, "utf8");
      n += Number(/^voluntary_ctxt_switches:\s+(\d+)$/m.exec(status)?.[1] ?? 0);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return n;
}

const { fleet, api, worker, close } = await startOcrFleet("idle", { form });
try {
  const pids = { api: api.pid, worker: worker.pid, redis: await redisPidOf(fleet.redis) };
  await sleep(3000);
  const before = Object.entries(pids).map(([name, pid]) => ({ name, pid, cpu: cpuMsOf(pid), wakes: wakeUps(pid) }));
  const t0 = performance.now();
  await sleep(seconds * 1000);
  const s = (performance.now() - t0) / 1000;
  say(`idle for ${s.toFixed(1)} s (${form}); per second:`);
  for (const b of before) {
    const cpu = (cpuMsOf(b.pid) - b.cpu) / s;
    const wakes = (wakeUps(b.pid) - b.wakes) / s;
    say(`  ${b.name.padEnd(7)} CPU ${cpu.toFixed(2).padStart(6)} ms   wake-ups ${wakes.toFixed(0).padStart(5)}`);
  }
} finally {
  await close();
}
