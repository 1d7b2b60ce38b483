/**
 * How much slower is onnxruntime alone when the machine's other core is busy? The model
 * (heavy conv or PaddleOCR cls) in runs of `batch` samples on the main thread (one intra-op thread, as every
 * contender), CPU time per sample, while a second process: does nothing, spins on
 * integer arithmetic (no memory traffic: what is left is the core's clock and what the
 * cores share), or copies 1.7 MB buffers round a ring (the memory traffic of a
 * 16-sample job). `rounds` interleaved windows each; prints every window and the median.
 *
 * The bench's limit is measured with the other core idle; every fleet contender runs
 * with both cores busy, so part of the runner's gap to the limit is this, not Citadel.
 *
 *   node --conditions=@citadel/source --import tsx test/bench/busy-neighbour.ts [heavy|ocr] [batch] [rounds] [seconds]
 */
import type { ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { OCR_CLS_PATH } from "@citadel/cli/sample-models";
import { buildHeavyConvNet } from "@citadel/onnx";
import * as ort from "onnxruntime-node";
import { SPINNING, say, sleep, spawnBusyLoop } from "./harness.js";
import { median } from "./measure.js";

const ocr = process.argv[2] === "ocr";
const batch = Number(process.argv[3] ?? (ocr ? 4 : 8));
const rounds = Number(process.argv[4] ?? 6);
const ms = Number(process.argv[5] ?? 2.5) * 1000;
const label = ocr ? "PaddleOCR cls" : "heavy conv";
const dims = ocr ? [batch, 3, 48, 192] : [batch, 3, 64, 64];
const size = dims.reduce((a, b) => a * b, 1);

const NEIGHBOURS = {
  idle: null,
  spinning: SPINNING,
  copying: {
    setup: "const ring = Array.from({ length: 8 }, () => Buffer.alloc(1.7e6, 1)); let i = 0",
    turn: "for (let k = 0; k < 64; k++, i++) ring[i % 8].copy(ring[(i + 1) % 8])",
  },
} as const;
type Neighbour = keyof typeof NEIGHBOURS;

const model = ocr ? new Uint8Array(readFileSync(OCR_CLS_PATH)) : buildHeavyConvNet();
const session = await ort.InferenceSession.create(model, {
  executionProviders: ["cpu"],
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
});
const inputs = Array.from({ length: 16 }, () => Float32Array.from({ length: size }, () => Math.random() * 2 - 1));
const feed = (i: number) => ({ x: new ort.Tensor("float32", inputs[i % inputs.length] as Float32Array, dims) });

/** CPU ms per sample over one window (after three warm-up runs). */
async function window(): Promise<number> {
  for (let w = 0; w < 3; w++) await session.run(feed(w));
  const cpu0 = process.cpuUsage();
  let runs = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < ms) await session.run(feed(runs++));
  const cpu = process.cpuUsage(cpu0);
  return (cpu.user + cpu.system) / 1000 / (runs * batch);
}

const results = new Map<Neighbour, number[]>();
for (let r = 0; r < rounds; r++) {
  for (const [name, loop] of Object.entries(NEIGHBOURS) as [Neighbour, (typeof NEIGHBOURS)[Neighbour]][]) {
    const child: ChildProcess | null = loop ? spawnBusyLoop(loop.setup, loop.turn) : null;
    try {
      await sleep(300);
      results.set(name, [...(results.get(name) ?? []), await window()]);
    } finally {
      child?.kill();
    }
  }
}
await session.release();

const idle = median(results.get("idle") ?? []);
say(`${label}, runs of ${batch}, ${rounds} windows of ${ms / 1000} s each, CPU ms per sample:`);
for (const [name, xs] of results) {
  const m = median(xs);
  const vsIdle = name === "idle" ? "" : ` (${((m / idle - 1) * 100).toFixed(1)}% over idle)`;
  say(`  other core ${name.padEnd(8)} median ${m.toFixed(3)}${vsIdle}  [${xs.map((x) => x.toFixed(3)).join(", ")}]`);
}
