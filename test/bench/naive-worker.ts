/**
 * The naive contender: a plain BullMQ Worker calling `session.run` once per job on
 * its main thread, as most users would first write it. Run as its own process by
 * bench.ts (env: REDIS_URL, NAIVE_QUEUE, NAIVE_PREFIX, NAIVE_MODEL, NAIVE_THREADS).
 * With NAIVE_NOOP=1 it is the bare worker of the capacity row and of the half-load
 * floor instead: no model, a processor that returns at once, NAIVE_CONCURRENCY jobs at
 * a time.
 * Prints "ready" on stdout once the session is loaded and the worker is running.
 */
import { readFileSync } from "node:fs";
import { type Processor, Worker } from "bullmq";
import { Redis } from "ioredis";
import * as ort from "onnxruntime-node";

interface NaiveJob {
  inputs: Record<string, { dtype: "float32"; shape: number[]; data: string }>;
}

const need = (k: string): string => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is required`);
  return v;
};

const noop = process.env.NAIVE_NOOP === "1";
const session = noop
  ? null
  : await ort.InferenceSession.create(readFileSync(need("NAIVE_MODEL")), {
      executionProviders: ["cpu"],
      intraOpNumThreads: Number(process.env.NAIVE_THREADS ?? "1"),
      interOpNumThreads: 1,
    });

/** Runs the model on the job's inputs; returns the outputs (base64) and the time `session.run` took. */
const infer =
  (s: ort.InferenceSession): Processor<NaiveJob> =>
  async (job) => {
    const feeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(job.data.inputs)) {
      const raw = Buffer.from(t.data, "base64");
      const data = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
      feeds[name] = new ort.Tensor("float32", data, t.shape);
    }
    const t0 = performance.now();
    const out = await s.run(feeds);
    const inferenceMs = performance.now() - t0;
    const outputs: Record<string, { dims: readonly number[]; data: string }> = {};
    for (const [name, t] of Object.entries(out)) {
      const d = t.data as Float32Array;
      outputs[name] = { dims: t.dims, data: Buffer.from(d.buffer, d.byteOffset, d.byteLength).toString("base64") };
    }
    return { outputs, inferenceMs };
  };

const connection = new Redis(need("REDIS_URL"), { maxRetriesPerRequest: null });
connection.on("error", () => undefined);

const worker = new Worker<NaiveJob>(need("NAIVE_QUEUE"), session ? infer(session) : async () => null, {
  connection,
  prefix: need("NAIVE_PREFIX"),
  concurrency: Number(process.env.NAIVE_CONCURRENCY ?? "1"),
});
worker.on("error", () => undefined);
await worker.waitUntilReady();
process.stdout.write("ready\n");

process.on("SIGTERM", () => {
  void worker.close().then(async () => {
    await session?.release();
    connection.disconnect();
    process.exit(0);
  });
});
