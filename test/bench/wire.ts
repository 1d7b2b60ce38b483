/**
 * Request bodies as each contender sends them, built once before any measurement so
 * that building them is never what is measured.
 *
 *   json    Citadel's JSON with base64 tensor data (`POST /v1/jobs`, application/json);
 *   binary  the Open Inference Protocol binary tensor extension: a UTF-8 JSON header of
 *           `Inference-Header-Content-Length` bytes, then each input's raw little-endian
 *           bytes in header order (`POST /v1/jobs`, application/octet-stream);
 *   naive   the job data object a plain BullMQ producer hands to `Queue.add`.
 */
import os from "node:os";
import { b64 } from "./harness.js";

export type Wire = "json" | "binary";

/** One input tensor of a job: `data` holds shape[0] samples. */
export interface WireInput {
  name: string;
  shape: number[];
  data: Float32Array;
}

export interface JsonBody {
  wire: "json";
  body: string;
}

export interface BinaryBody {
  wire: "binary";
  body: Uint8Array;
  /** Bytes of the JSON header at the start of `body`. */
  headerLength: number;
}

export type PreparedBody = JsonBody | BinaryBody;

export function jsonBody(model: string, inputs: readonly WireInput[]): JsonBody {
  const byName = Object.fromEntries(
    inputs.map((t) => [t.name, { dtype: "float32", shape: t.shape, data: b64(t.data) }]),
  );
  return { wire: "json", body: JSON.stringify({ model, inputs: byName }) };
}

export function binaryBody(model: string, inputs: readonly WireInput[]): BinaryBody {
  // Float32Array bytes are the platform's order; the wire's is little-endian.
  if (os.endianness() !== "LE") throw new Error("binary bodies are built from native bytes: needs a little-endian CPU");
  const header = Buffer.from(
    JSON.stringify({
      model,
      inputs: inputs.map((t) => ({
        name: t.name,
        datatype: "FP32",
        shape: t.shape,
        parameters: { binary_data_size: t.data.byteLength },
      })),
    }),
    "utf8",
  );
  const tensors = inputs.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  return { wire: "binary", body: Buffer.concat([header, ...tensors]), headerLength: header.length };
}

export function prepareBody(wire: Wire, model: string, inputs: readonly WireInput[]): PreparedBody {
  return wire === "json" ? jsonBody(model, inputs) : binaryBody(model, inputs);
}

/** The naive producer's job data: the same base64 payload Citadel's JSON carries. */
export interface NaiveJobData {
  inputs: Record<string, { dtype: "float32"; shape: number[]; data: string }>;
}

export function naiveJobData(inputs: readonly WireInput[]): NaiveJobData {
  return {
    inputs: Object.fromEntries(
      inputs.map((t) => [t.name, { dtype: "float32" as const, shape: t.shape, data: b64(t.data) }]),
    ),
  };
}

/** `samples` consecutive entries of a pool of 1-sample inputs, starting at `first`, as one tensor. */
export function stackSamples(pool: readonly Float32Array[], first: number, samples: number): Float32Array {
  const per = pool[0]?.length ?? 0;
  const out = new Float32Array(per * samples);
  for (let k = 0; k < samples; k++) out.set(pool[(first + k) % pool.length] ?? new Float32Array(per), k * per);
  return out;
}
