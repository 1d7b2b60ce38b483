import { DTYPE_BYTES } from "@citadel/contracts";
import type { TypedArray } from "./codec.js";
import { allocate, type Tensor, viewAs } from "./codec.js";
import { releasableBuffer } from "./release.js";

/** Copies `count` elements of `src` from `from` into `dst` at `to`, as bytes (any dtype). */
function copyElements(dst: TypedArray, to: number, src: TypedArray, from: number, count: number): void {
  const size = src.BYTES_PER_ELEMENT;
  new Uint8Array(dst.buffer, dst.byteOffset + to * size, count * size).set(
    new Uint8Array(src.buffer, src.byteOffset + from * size, count * size),
  );
}

/** Splits a shape around `axis` into outer × axis × inner element counts. */
function strides(shape: readonly number[], axis: number): { outer: number; inner: number } {
  let outer = 1;
  let inner = 1;
  for (let i = 0; i < axis; i++) outer *= shape[i] ?? 1;
  for (let i = axis + 1; i < shape.length; i++) inner *= shape[i] ?? 1;
  return { outer, inner };
}

/**
 * Concatenates tensors along `axis`. Every part must have the first part's dtype and
 * rank, equal dimensions off the axis, and exactly the bytes its shape needs: a part
 * that differs would otherwise be laid out with the first part's strides, putting one
 * job's bytes into another job's slot (or reading past a buffer).
 */
export function concat(parts: readonly Tensor[], axis: number): Tensor {
  const first = parts[0];
  if (!first) throw new Error("concat of nothing");
  for (const p of parts) checkPart(p, first, axis);
  if (parts.length === 1) return first;
  const { outer, inner } = strides(first.shape, axis);
  const sizes = parts.map((p) => p.shape[axis] ?? 0);
  const total = sizes.reduce((a, b) => a + b, 0);
  const shape = [...first.shape];
  shape[axis] = total;
  // Every element is written below, so no zero-fill; a buffer of its own, so that a
  // batch's feeds go to the runner thread (and its joined outputs back) by transfer.
  const out = viewAs(first.dtype, releasableBuffer(outer * total * inner * DTYPE_BYTES[first.dtype]));
  let dst = 0;
  for (let o = 0; o < outer; o++) {
    parts.forEach((p, k) => {
      const n = (sizes[k] ?? 0) * inner;
      copyElements(out, dst, p.data, o * n, n);
      dst += n;
    });
  }
  return { dtype: first.dtype, shape, data: out };
}

function checkPart(p: Tensor, first: Tensor, axis: number): void {
  const where = `concat along axis ${axis}: part [${p.shape.join(",")}] ${p.dtype}`;
  if (p.dtype !== first.dtype || p.shape.length !== first.shape.length || axis >= p.shape.length)
    throw new Error(`${where} does not match [${first.shape.join(",")}] ${first.dtype}`);
  for (let i = 0; i < p.shape.length; i++) {
    if (i !== axis && p.shape[i] !== first.shape[i])
      throw new Error(`${where} differs from [${first.shape.join(",")}] off the batch axis`);
  }
  const bytes = p.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[p.dtype];
  if (p.data.byteLength !== bytes)
    throw new Error(`${where} holds ${p.data.byteLength} bytes, its shape needs ${bytes}`);
}

/** The inverse of concat: cuts `t` along `axis` into pieces of the given sizes. */
export function split(t: Tensor, axis: number, sizes: readonly number[]): Tensor[] {
  if (sizes.length === 1) return [t];
  const { outer, inner } = strides(t.shape, axis);
  const total = t.shape[axis] ?? 0;
  const sum = sizes.reduce((a, b) => a + b, 0);
  if (sum !== total) throw new Error(`split sizes ${sum} do not add up to axis length ${total}`);
  const offsets: number[] = [];
  sizes.reduce((acc, s) => {
    offsets.push(acc);
    return acc + s;
  }, 0);
  return sizes.map((size, k) => {
    const shape = [...t.shape];
    shape[axis] = size;
    const out = allocate(t.dtype, outer * size * inner);
    const off = offsets[k] ?? 0;
    for (let o = 0; o < outer; o++) {
      const src = (o * total + off) * inner;
      copyElements(out, o * size * inner, t.data, src, size * inner);
    }
    return { dtype: t.dtype, shape, data: out };
  });
}

/**
 * Cuts `t` along `axis` like split, without copying where each piece is one contiguous
 * run of its bytes (every dimension before the axis is 1, as for a batch axis 0): the
 * pieces are then views over `t`'s buffer. Elsewhere each piece is a copy (split).
 */
export function slices(t: Tensor, axis: number, sizes: readonly number[]): Tensor[] {
  const { outer, inner } = strides(t.shape, axis);
  if (outer !== 1 || sizes.length === 1) return split(t, axis, sizes);
  const total = t.shape[axis] ?? 0;
  const sum = sizes.reduce((a, b) => a + b, 0);
  if (sum !== total) throw new Error(`split sizes ${sum} do not add up to axis length ${total}`);
  const out: Tensor[] = [];
  let at = 0;
  for (const size of sizes) {
    const shape = [...t.shape];
    shape[axis] = size;
    out.push({ dtype: t.dtype, shape, data: t.data.subarray(at * inner, (at + size) * inner) });
    at += size;
  }
  return out;
}
