/**
 * The runner: one worker thread holding one onnxruntime session. create() and run()
 * are synchronous native calls, so they live here, off the event loop that renews
 * BullMQ locks. A run that never returns is handled by abandoning this thread.
 *
 * Runs are queued here, not in the parent: the next run begins the moment one ends,
 * without a round trip through the parent's event loop, which is busy with Redis,
 * validation and settling (on the bench's 16-sample row, two cores, a tenth of the
 * machine sat idle while the runner waited for it). Each run says when it begins,
 * since the parent's timeout counts from then. A batch in parts (protocol.ts, RunParts)
 * comes as one message and is cut, run part after part and joined here, off the parent's
 * event loop; each part's start is noted in the shared progress slots, not sent.
 */
import { parentPort, workerData } from "node:worker_threads";
import { DType } from "@citadel/contracts";
import { concat, slices, type Tensor, viewAs } from "@citadel/tensors";
import * as ort from "onnxruntime-node";
import { toOrtTensor } from "./ort-tensor.js";
import type { FromRunner, IoMeta, RunParts, ToRunner, WireTensor } from "./protocol.js";
import { createSessionAndWipe, firstLine } from "./session-load.js";

const port = parentPort;
if (!port) throw new Error("runner-thread must run in a worker thread");

// Provider-library load failures are reported through our own error path.
ort.env.logLevel = "fatal";

let session: ort.InferenceSession | null = null;

type RunMessage = Extract<ToRunner, { type: "run" }>;

/** Where this thread notes each part's start (protocol.ts, PROGRESS_BYTES); absent in a thread started without it. */
const progress =
  workerData?.progress instanceof SharedArrayBuffer
    ? new BigInt64Array(workerData.progress as SharedArrayBuffer)
    : null;

/** Output dtypes the parent can hold (the manifest's dtypes); others fail the run. */
const SERVED: ReadonlySet<string> = new Set(DType.options);

function send(msg: FromRunner, transfer: ArrayBuffer[] = []): void {
  port?.postMessage(msg, transfer);
}

function meta(m: readonly ort.InferenceSession.ValueMetadata[]): IoMeta[] {
  return m.map((v) => ({
    name: v.name,
    type: v.isTensor ? v.type : "non-tensor",
    shape: v.isTensor ? [...v.shape] : [],
  }));
}

async function load(msg: Extract<ToRunner, { type: "load" }>): Promise<void> {
  const loaded = await createSessionAndWipe(new Uint8Array(msg.model), msg);
  session = loaded.session;
  if (!session) {
    send({ type: "load-failed", message: "no execution provider could load the model", attempts: loaded.attempts });
    return;
  }
  const provider = loaded.attempts[loaded.attempts.length - 1]?.provider ?? "cpu";
  send({
    type: "loaded",
    provider,
    inputs: meta(session.inputMetadata),
    outputs: meta(session.outputMetadata),
    attempts: loaded.attempts,
  });
}

/** The clock both threads read progress by: µs since the epoch. */
function nowMicros(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000));
}

/** Notes in progress that a part of run `id` begins now: the time first, so a reader that sees the id sees its time. */
function noteStart(id: number): void {
  if (!progress) return;
  Atomics.store(progress, 1, nowMicros());
  Atomics.store(progress, 0, BigInt(id));
}

function asTensor(w: WireTensor): Tensor {
  return { dtype: w.dtype, shape: w.shape, data: viewAs(w.dtype, new Uint8Array(w.buffer)) };
}

/** Each run's feeds: the batch cut along each input's batch axis (views where contiguous). */
function partsOf(msg: RunMessage): Record<string, Tensor>[] {
  const feeds = Object.entries(msg.feeds).map(([name, w]) => [name, asTensor(w)] as const);
  const p = msg.parts;
  if (!p || p.sizes.length < 2) return [Object.fromEntries(feeds)];
  const out = p.sizes.map(() => ({}) as Record<string, Tensor>);
  for (const [name, t] of feeds) {
    if (!(name in p.inputAxes)) throw new Error(`input '${name}' has no batch axis to cut it along`);
    const axis = p.inputAxes[name] ?? null;
    const cut = axis === null ? p.sizes.map(() => t) : slices(t, axis, p.sizes);
    cut.forEach((c, k) => {
      (out[k] as Record<string, Tensor>)[name] = c;
    });
  }
  return out;
}

/** Each output joined across the runs along its batch axis. */
function joined(pieces: Record<string, Tensor>[], p: RunParts | undefined): Record<string, Tensor> {
  const [first] = pieces;
  if (!first || pieces.length === 1) return first ?? {};
  const out: Record<string, Tensor> = {};
  for (const name of Object.keys(first)) {
    const axis = p?.outputAxes[name] ?? null;
    if (axis === null) throw new Error(`output '${name}' cannot be joined across runs`);
    out[name] = concat(
      pieces.map((o) => o[name] as Tensor),
      axis,
    );
  }
  return out;
}

async function run(msg: RunMessage): Promise<void> {
  if (!session) return send({ type: "run-failed", id: msg.id, message: "no model loaded" });
  try {
    const parts = partsOf(msg);
    const pieces: Record<string, Tensor>[] = [];
    const runs: number[] = [];
    for (const [k, part] of parts.entries()) {
      if (k > 0) noteStart(msg.id);
      const feeds: Record<string, ort.Tensor> = {};
      for (const [name, t] of Object.entries(part)) feeds[name] = toOrtTensor(t);
      const t0 = performance.now();
      const out = await session.run(feeds, msg.outputs);
      runs.push(performance.now() - t0);
      const unserved = Object.entries(out).find(([, t]) => !SERVED.has(t.type));
      if (unserved) {
        for (const t of Object.values(out)) t.dispose();
        return send({
          type: "run-failed",
          id: msg.id,
          message: `output '${unserved[0]}' has dtype ${unserved[1].type}, which Citadel does not serve`,
        });
      }
      const piece: Record<string, Tensor> = {};
      for (const [name, t] of Object.entries(out)) {
        const data = t.data as Exclude<ort.Tensor.DataType, string[]>;
        // Copy into a buffer we own: ORT's output may share a larger backing store.
        const buffer = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer;
        piece[name] = asTensor({ dtype: t.type as WireTensor["dtype"], shape: [...t.dims], buffer });
        t.dispose();
      }
      pieces.push(piece);
    }
    const outputs: Record<string, WireTensor> = {};
    const transfer: ArrayBuffer[] = [];
    for (const [name, t] of Object.entries(joined(pieces, msg.parts))) {
      const d = t.data;
      const buffer =
        d.byteOffset === 0 && d.byteLength === d.buffer.byteLength
          ? (d.buffer as ArrayBuffer)
          : (d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength) as ArrayBuffer);
      outputs[name] = { dtype: t.dtype, shape: t.shape, buffer };
      transfer.push(buffer);
    }
    send({ type: "result", id: msg.id, outputs, ms: runs.reduce((a, b) => a + b, 0), runs }, transfer);
  } catch (err) {
    send({ type: "run-failed", id: msg.id, message: firstLine(err) });
  }
}

async function exit(): Promise<void> {
  await session?.release();
  session = null;
  port?.close();
  process.exit(0);
}

const queued: RunMessage[] = [];
let busy = false;
let exiting = false;

/**
 * Starts the next queued run on a later turn of this thread's loop: messages that came
 * during the last run (a skip, an exit) are read first, as the loop polls its port
 * before it runs the turn's immediates.
 */
function pump(): void {
  if (busy || exiting || queued.length === 0) return;
  busy = true;
  setImmediate(() => void runNext());
}

async function runNext(): Promise<void> {
  const msg = queued.shift();
  if (msg) {
    noteStart(msg.id);
    send({ type: "started", id: msg.id });
    await run(msg);
  }
  busy = false;
  if (exiting) return exit();
  pump();
}

port.on("message", (msg: ToRunner) => {
  switch (msg.type) {
    case "load":
      return void load(msg);
    case "run":
      queued.push(msg);
      return pump();
    case "skip": {
      const i = queued.findIndex((q) => q.id === msg.id);
      if (i < 0) return; // begun already: the parent learns it from "started"
      queued.splice(i, 1);
      return send({ type: "skipped", id: msg.id });
    }
    case "exit":
      // Queued runs are dropped (the parent has failed them); one in progress ends first.
      exiting = true;
      queued.length = 0;
      if (!busy) return void exit();
  }
});
