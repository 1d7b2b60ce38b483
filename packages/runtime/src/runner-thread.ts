/**
 * The runner: one worker thread holding one onnxruntime session. create() and run()
 * are synchronous native calls, so they live here, off the event loop that renews
 * BullMQ locks. A run that never returns is handled by abandoning this thread.
 */
import { parentPort } from "node:worker_threads";
import { DType } from "@citadel/contracts";
import { viewAs } from "@citadel/tensors";
import * as ort from "onnxruntime-node";
import type { FromRunner, IoMeta, ProviderAttempt, ToRunner, WireTensor } from "./protocol.js";

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

function toOrt(t: WireTensor): ort.Tensor {
  return new ort.Tensor(t.dtype, viewAs(t.dtype, new Uint8Array(t.buffer)) as ort.Tensor.DataType, t.shape);
}

function meta(m: readonly ort.InferenceSession.ValueMetadata[]): IoMeta[] {
  return m.map((v) => ({
    name: v.name,
    type: v.isTensor ? v.type : "non-tensor",
    shape: v.isTensor ? [...v.shape] : [],
  }));
}

async function load(msg: Extract<ToRunner, { type: "load" }>): Promise<void> {
  const bytes = new Uint8Array(msg.model);
  const attempts: ProviderAttempt[] = [];
  try {
    for (const provider of msg.providers) {
      try {
        const ep = provider === "cpu" ? "cpu" : { name: provider, deviceId: msg.deviceId };
        session = await ort.InferenceSession.create(bytes, {
          executionProviders: [ep],
          intraOpNumThreads: msg.threads,
          interOpNumThreads: 1,
          graphOptimizationLevel: "all",
          logSeverityLevel: 4,
        });
        attempts.push({ provider, ok: true });
        send({
          type: "loaded",
          provider,
          inputs: meta(session.inputMetadata),
          outputs: meta(session.outputMetadata),
          attempts,
        });
        return;
      } catch (err) {
        attempts.push({ provider, ok: false, error: firstLine(err) });
      }
    }
    send({ type: "load-failed", message: "no execution provider could load the model", attempts });
  } finally {
    // The plaintext model lives only as long as create() needs it.
    bytes.fill(0);
  }
}

async function run(msg: Extract<ToRunner, { type: "run" }>): Promise<void> {
  if (!session) return send({ type: "run-failed", id: msg.id, message: "no model loaded" });
  try {
    const feeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(msg.feeds)) feeds[name] = toOrt(t);
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

function firstLine(err: unknown): string {
  const s = err instanceof Error ? err.message : String(err);
  return (s.split("\n")[0] ?? "").slice(0, 300);
}

async function exit(): Promise<void> {
  await session?.release();
  session = null;
  port?.close();
  process.exit(0);
}

port.on("message", (msg: ToRunner) => {
  switch (msg.type) {
    case "load":
      return void load(msg);
    case "run":
      return void run(msg);
    case "exit":
      return void exit();
  }
});
