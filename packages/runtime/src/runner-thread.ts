/**
 * The runner: one worker thread holding one onnxruntime session. create() and run()
 * are synchronous native calls, so they live here, off the event loop that renews
 * BullMQ locks. A run that never returns is handled by abandoning this thread.
 *
 * Runs are queued here, not in the parent: the next run begins the moment one ends,
 * without a round trip through the parent's event loop, which is busy with Redis,
 * validation and settling (on the bench's 16-sample row, two cores, a tenth of the
 * machine sat idle while the runner waited for it). Each run says when it begins,
 * since the parent's timeout counts from then.
 */
import { parentPort } from "node:worker_threads";
import { DType } from "@citadel/contracts";
import * as ort from "onnxruntime-node";
import { toOrtTensor } from "./ort-tensor.js";
import type { FromRunner, IoMeta, ToRunner, WireTensor } from "./protocol.js";
import { createSessionAndWipe, firstLine } from "./session-load.js";

const port = parentPort;
if (!port) throw new Error("runner-thread must run in a worker thread");

// Provider-library load failures are reported through our own error path.
ort.env.logLevel = "fatal";

let session: ort.InferenceSession | null = null;

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

async function run(msg: Extract<ToRunner, { type: "run" }>): Promise<void> {
  if (!session) return send({ type: "run-failed", id: msg.id, message: "no model loaded" });
  try {
    const feeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(msg.feeds)) feeds[name] = toOrtTensor(t);
    const t0 = performance.now();
    const out = await session.run(feeds, msg.outputs);
    const ms = performance.now() - t0;
    const outputs: Record<string, WireTensor> = {};
    const transfer: ArrayBuffer[] = [];
    const unserved = Object.entries(out).find(([, t]) => !SERVED.has(t.type));
    if (unserved) {
      for (const t of Object.values(out)) t.dispose();
      return send({
        type: "run-failed",
        id: msg.id,
        message: `output '${unserved[0]}' has dtype ${unserved[1].type}, which Citadel does not serve`,
      });
    }
    for (const [name, t] of Object.entries(out)) {
      const data = t.data as Exclude<ort.Tensor.DataType, string[]>;
      // Copy into a buffer we own: ORT's output may share a larger backing store.
      const buffer = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer;
      outputs[name] = { dtype: t.type as WireTensor["dtype"], shape: [...t.dims], buffer };
      transfer.push(buffer);
      t.dispose();
    }
    send({ type: "result", id: msg.id, outputs, ms }, transfer);
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

type RunMessage = Extract<ToRunner, { type: "run" }>;
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
