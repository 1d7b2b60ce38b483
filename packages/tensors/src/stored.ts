import { CitadelError, DTYPE_BYTES, type InputMeta } from "@citadel/contracts";
import { bytesOf, elementCount, type Tensor } from "./codec.js";
import type { RawTensor } from "./validate.js";

/**
 * A job's inputs as they are stored: described in the job data (name, dtype, shape,
 * in `order`) and their bytes back to back in one buffer, so they cross Redis once,
 * as bytes, and the worker reads them as views without decoding anything.
 */
export function packInputs(
  tensors: Readonly<Record<string, Tensor>>,
  order: readonly string[],
): { meta: InputMeta[]; bytes: Buffer } {
  const meta: InputMeta[] = [];
  const parts: Buffer[] = [];
  for (const name of order) {
    const t = tensors[name];
    if (!t) continue;
    meta.push({ name, dtype: t.dtype, shape: [...t.shape] });
    parts.push(bytesOf(t.data));
  }
  // One input (most models): its bytes as they are, a view of the request's buffer, not
  // a copy; Redis gets them once and nothing writes to a request's buffer.
  return { meta, bytes: parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts) };
}

/**
 * Stored input bytes as raw tensors (views into `bytes`, no copy), refusing bytes
 * whose length is not exactly what the description adds up to (a Redis writer's
 * edit, a truncated value): JOB_INVALID, before anything reads them.
 */
export function unpackInputs(meta: readonly InputMeta[], bytes: Uint8Array): Record<string, RawTensor> {
  const out: Record<string, RawTensor> = {};
  let offset = 0;
  for (const m of meta) {
    const len = elementCount(m.shape, m.name) * DTYPE_BYTES[m.dtype];
    if (offset + len > bytes.byteLength) throw storedMismatch(bytes.byteLength);
    out[m.name] = { dtype: m.dtype, shape: [...m.shape], bytes: bytes.subarray(offset, offset + len) };
    offset += len;
  }
  if (offset !== bytes.byteLength) throw storedMismatch(bytes.byteLength);
  return out;
}

function storedMismatch(got: number): CitadelError {
  return new CitadelError("JOB_INVALID", `the job's stored inputs (${got} bytes) do not match their description`);
}
