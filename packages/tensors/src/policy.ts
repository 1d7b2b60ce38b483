import type { OutputPolicy } from "@citadel/contracts";
import { allocate, type Tensor, type TypedArray } from "./codec.js";

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
  return t.dtype === "float32" || t.dtype === "float64";
}

/** Descending order of two elements of any dtype (bigint for int64); ties keep the lower index first. */
function descending(src: TypedArray): (a: number, b: number) => number {
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
  const order = descending(t.data);
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

function round(t: Tensor, decimals: number): Tensor {
  const f = 10 ** decimals;
  const src = t.data as Float32Array | Float64Array;
  const data = allocate(t.dtype, src.length) as Float32Array;
  for (let i = 0; i < src.length; i++) data[i] = Math.round((src[i] ?? 0) * f) / f;
  return { dtype: t.dtype, shape: t.shape, data };
}
