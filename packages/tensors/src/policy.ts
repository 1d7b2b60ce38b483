import { FLOAT_DTYPES, type OutputPolicy } from "@citadel/contracts";
import { allocate, type Tensor, type TypedArray } from "./codec.js";
import { fromBfloat16Bits, fromFloat16Bits, toBfloat16Bits, toFloat16Bits } from "./half.js";

/** Merges a tenant's overrides onto the model's policy; the stricter setting wins. */
export function mergePolicies(model: OutputPolicy, tenant?: OutputPolicy): OutputPolicy {
  if (!tenant) return model;
  const allowed =
    model.allowedOutputs && tenant.allowedOutputs
      ? model.allowedOutputs.filter((o) => tenant.allowedOutputs?.includes(o))
      : (tenant.allowedOutputs ?? model.allowedOutputs);
  const min = (a?: number, b?: number) => (a === undefined ? b : b === undefined ? a : Math.min(a, b));
  return {
    ...(allowed ? { allowedOutputs: allowed } : {}),
    ...(min(model.topK, tenant.topK) !== undefined ? { topK: min(model.topK, tenant.topK) } : {}),
    ...(min(model.decimals, tenant.decimals) !== undefined ? { decimals: min(model.decimals, tenant.decimals) } : {}),
    ...(model.labelOnly || tenant.labelOnly ? { labelOnly: true } : {}),
  };
}

/**
 * Applies an output policy to one job's outputs before anything is stored: drop
 * outputs not allowed, reduce to label or top-k along the last axis, round floats.
 * Every numeric dtype is covered (an int8 score leaks as much as a float one);
 * rounding leaves integers as they are. `name.indices` carries top-k positions;
 * labelOnly replaces the output by its argmax.
 */
export function applyOutputPolicy(outputs: Record<string, Tensor>, policy: OutputPolicy): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [name, t] of Object.entries(outputs)) {
    if (policy.allowedOutputs && !policy.allowedOutputs.includes(name)) continue;
    const ranked = t.shape.length > 0;
    if (policy.labelOnly && ranked) {
      const label = topK(t, 1).indices;
      out[name] = { ...label, shape: label.shape.slice(0, -1) };
      continue;
    }
    let v = t;
    if (policy.topK !== undefined && ranked) {
      const r = topK(t, policy.topK);
      v = r.values;
      out[`${name}.indices`] = r.indices;
    }
    if (policy.decimals !== undefined && isFloat(v)) v = round(v, policy.decimals);
    out[name] = v;
  }
  return out;
}

function isFloat(t: Tensor): boolean {
  return FLOAT_DTYPES.has(t.dtype);
}

/** Reads and writes elements as numbers; float16/bfloat16 go through their bit patterns. */
function numberCodec(t: Tensor): { get: (bits: number) => number; set: (x: number) => number } | null {
  if (t.dtype === "float16") return { get: fromFloat16Bits, set: toFloat16Bits };
  if (t.dtype === "bfloat16") return { get: fromBfloat16Bits, set: toBfloat16Bits };
  return null;
}

/** Descending order of two elements of any dtype (bigint for int64); ties keep the lower index first. */
function descending(t: Tensor): (a: number, b: number) => number {
  const src = t.data;
  const half = numberCodec(t);
  if (half) {
    // Compare values, not patterns (a sign bit makes a pattern large); NaN sorts last.
    const v = Array.from(src as Uint16Array, (b) => half.get(b));
    return (a, b) => desc(v[a] as number, v[b] as number) || a - b;
  }
  if (src instanceof BigInt64Array) {
    return (a, b) => {
      const x = src[a] as bigint;
      const y = src[b] as bigint;
      return x === y ? a - b : x < y ? 1 : -1;
    };
  }
  const s = src as Exclude<TypedArray, BigInt64Array>;
  return (a, b) => (s[b] as number) - (s[a] as number) || a - b;
}

function topK(t: Tensor, k: number): { values: Tensor; indices: Tensor } {
  const last = t.shape[t.shape.length - 1] ?? 1;
  const kk = Math.min(k, last);
  const rows = last === 0 ? 0 : t.data.length / last;
  const values = allocate(t.dtype, rows * kk);
  const indices = allocate("int32", rows * kk) as Int32Array;
  const order = descending(t);
  const idx = Array.from({ length: last }, (_, i) => i);
  for (let r = 0; r < rows; r++) {
    const base = r * last;
    const row = idx.map((i) => base + i).sort(order);
    for (let j = 0; j < kk; j++) {
      const i = row[j] ?? base;
      (values as TypedArray)[r * kk + j] = t.data[i] as never;
      indices[r * kk + j] = i - base;
    }
  }
  const shape = [...t.shape.slice(0, -1), kk];
  return { values: { dtype: t.dtype, shape, data: values }, indices: { dtype: "int32", shape, data: indices } };
}

function desc(x: number, y: number): number {
  if (Number.isNaN(x)) return Number.isNaN(y) ? 0 : 1;
  if (Number.isNaN(y)) return -1;
  return y - x;
}

function round(t: Tensor, decimals: number): Tensor {
  const f = 10 ** decimals;
  const src = t.data as Float32Array | Float64Array | Uint16Array;
  const data = allocate(t.dtype, src.length) as Float32Array | Float64Array | Uint16Array;
  const half = numberCodec(t);
  for (let i = 0; i < src.length; i++) {
    const x = half ? half.get(src[i] ?? 0) : (src[i] ?? 0);
    const r = Math.round(x * f) / f;
    data[i] = half ? half.set(r) : r;
  }
  return { dtype: t.dtype, shape: t.shape, data };
}
