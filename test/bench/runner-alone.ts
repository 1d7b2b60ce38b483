/**
 * Is the runner thread itself slower than onnxruntime alone? Heavy conv in runs of
 * `batch` samples, each on a fresh input: on the main thread, then on a worker thread
 * that is handed each input by transfer, as the worker hands its runner a batch. Prints
 * the time inside session.run per sample for both (no other load: run it alone).
 *
 *   node --conditions=@citadel/source --import tsx test/bench/runner-alone.ts [batch] [seconds]
 */
import { Worker } from "node:worker_threads";
import { buildHeavyConvNet } from "@citadel/onnx";
import * as ort from "onnxruntime-node";
import { say } from "./harness.js";

const batch = Number(process.argv[2] ?? 16);
const ms = Number(process.argv[3] ?? 4) * 1000;
const dims = [batch, 3, 64, 64];
const size = dims.reduce((a, b) => a * b, 1);
const model = buildHeavyConvNet();
const options = { executionProviders: ["cpu"], intraOpNumThreads: 1, interOpNumThreads: 1 };
const fresh = () => Float32Array.from({ length: size }, () => Math.random() * 2 - 1);

async function onMain(): Promise<number> {
  const session = await ort.InferenceSession.create(model, options);
  for (let w = 0; w < 3; w++) await session.run({ x: new ort.Tensor("float32", fresh(), dims) });
  let inRun = 0;
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    const x = new ort.Tensor("float32", fresh(), dims);
    const t = performance.now();
    await session.run({ x });
    inRun += performance.now() - t;
    n += batch;
  }
  await session.release();
  return inRun / n;
}

// A data: module cannot resolve bare names: it imports onnxruntime-node by its file URL.
const threadSource = `
import { parentPort, workerData } from "node:worker_threads";
const ort = await import(workerData.ort);
const session = await ort.InferenceSession.create(workerData.model, workerData.options);
let inRun = 0;
parentPort.on("message", async (m) => {
  if (!m.buffer) return parentPort.postMessage({ inRun });
  const t = performance.now();
  await session.run({ x: new ort.Tensor("float32", new Float32Array(m.buffer), workerData.dims) });
  inRun += performance.now() - t;
  parentPort.postMessage({});
});
parentPort.postMessage({});
`;

async function onThread(): Promise<number> {
  const worker = new Worker(new URL(`data:text/javascript,${encodeURIComponent(threadSource)}`), {
    workerData: { ort: import.meta.resolve("onnxruntime-node"), model, options, dims },
  });
  const reply = () => new Promise<{ inRun?: number }>((r) => worker.once("message", r));
  await reply();
  const send = async () => {
    const buffer = fresh().buffer;
    worker.postMessage({ buffer }, [buffer]);
    await reply();
  };
  for (let w = 0; w < 3; w++) await send();
  worker.postMessage({});
  const before = (await reply()).inRun ?? 0;
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    await send();
    n += batch;
  }
  worker.postMessage({});
  const after = (await reply()).inRun ?? 0;
  await worker.terminate();
  return (after - before) / n;
}

for (let pass = 1; pass <= 2; pass++) {
  const main = await onMain();
  const thread = await onThread();
  say(
    `pass ${pass}: heavy conv, runs of ${batch}, fresh inputs: ms per sample inside session.run: ` +
      `main thread ${main.toFixed(3)}, worker thread (inputs transferred) ${thread.toFixed(3)}`,
  );
}
