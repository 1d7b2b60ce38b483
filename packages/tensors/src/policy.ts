import type { OutputPolicy } from "@citadel/contracts";
import { allocate, type Tensor } from "./codec.js";

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
 * `name.indices` carries top-k positions; labelOnly replaces the output by argmax.
 */
export function applyOutputPolicy(outputs: Record<string, Tensor>, policy: OutputPolicy): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [name, t] of Object.entries(outputs)) {
    if (policy.allowedOutputs && !policy.allowedOutputs.includes(name)) continue;
    const isFloat = t.dtype === "float32" || t.dtype === "float64";
    if (policy.labelOnly && isFloat && t.shape.length > 0) {
      out[name] = topK(t, 1).indices;
      const last = out[name].shape.length - 1;
      out[name] = { ...out[name], shape: out[name].shape.slice(0, last) };
      continue;
    }
    let v = t;
    if (policy.topK !== undefined && isFloat && t.shape.length > 0) {
      const r = topK(t, policy.topK);
      v = r.values;
      out[`${name}.indices`] = r.indices;
    }
    if (policy.decimals !== undefined && isFloat) v = round(v, policy.decimals);
    out[name] = v;
  }
  return out;
}

function topK(t: Tensor, k: number): { values: Tensor; indices: Tensor } {
  const last = t.shape[t.shape.length - 1] ?? 1;
  const kk = Math.min(k, last);
  const rows = t.data.length / last;
  const values = allocate(t.dtype, rows * kk) as Float32Array;
  const indices = allocate("int32", rows * kk) as Int32Array;
  const src = t.data as Float32Array | Float64Array;
  const idx = Array.from({ length: last }, (_, i) => i);
  for (let r = 0; r < rows; r++) {
    const base = r * last;
    idx.sort((a, b) => (src[base + b] ?? 0) - (src[base + a] ?? 0) || a - b);
    for (let j = 0; j < kk; j++) {
      const i = idx[j] ?? 0;
      values[r * kk + j] = src[base + i] ?? 0;
      indices[r * kk + j] = i;
    }
    idx.sort((a, b) => a - b);
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
