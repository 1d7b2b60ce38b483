// A model whose single run takes a long, tunable time, for timeout and watchdog tests.
//
//   x [N,1] ──────────────────────────────────────────────┐
//   S0 [K,K] ─▶ Loop(trip_count = iterations) { S = S · P } ─▶ ReduceMax(S) = 1 ─▶ y = x + 1   [N,1]
//
// P is a cyclic-shift permutation matrix, so every MatMul is a full K×K×K float product (2·K³ FLOP) whose result is
// exact: it only moves S's columns around. S0's largest entry is exactly 1, so max(S) stays 1 and `y = x + 1`
// bit-exactly, whatever `iterations` is. The Loop consumes `x`, so onnxruntime cannot constant-fold it away.
import { mulberry32 } from "./prng.js";
import { encodeModel, floatTensor, graphAttr, int64Tensor, intAttr, makeModel, node, valueInfo } from "./proto.js";

export interface SlowModelOptions {
  /** Loop trip count: the run time grows linearly with it. */
  iterations: number;
  /** K, the side of the square matrix multiplied once per iteration (default 256). */
  size?: number;
}

export const SLOW_MODEL_DEFAULT_SIZE = 256;

/**
 * Measured on this project's machine (2 vCPUs shared with other work, onnxruntime-node 1.30 CPU EP, batch 1, warm
 * session), default size 256. The run time is linear in `iterations`; with the default intra-op thread pool MLAS uses
 * both cores, with `intraOpNumThreads: 1` one. Rough figures: a loaded or faster machine shifts them by ±30 %.
 *   default threads:      ≈ 0.21–0.25 ms/iteration: 200 → ≈ 50 ms, 13 000 → ≈ 3 s
 *   intraOpNumThreads: 1: ≈ 0.37 ms/iteration:      130 → ≈ 50 ms,  8 000 → ≈ 3 s
 * Session creation stays < 50 ms whatever `iterations` is (only the trip-count initializer changes).
 * Under CPU contention the default pool (which spin-waits) degraded badly here: 13 000 iterations once took 13.6 s while
 * other test files ran; with one intra-op thread 8 000 iterations stayed at 2.8–3.5 s. Prefer intraOpNumThreads: 1
 * when the run time matters.
 */
export const SLOW_MODEL_TIMINGS = {
  size: SLOW_MODEL_DEFAULT_SIZE,
  defaultThreads: { msPerIteration: 0.23, iterationsFor50ms: 200, iterationsFor3s: 13_000 },
  singleThread: { msPerIteration: 0.37, iterationsFor50ms: 130, iterationsFor3s: 8_000 },
} as const;

/** `x` float32 [N,1] → `y` float32 [N,1] = x + 1, after `iterations` K×K MatMuls. */
export function buildSlowModel(opts: SlowModelOptions): Uint8Array {
  const { iterations } = opts;
  const k = opts.size ?? SLOW_MODEL_DEFAULT_SIZE;
  if (!Number.isSafeInteger(iterations) || iterations < 0) {
    throw new RangeError(`slow model iterations must be a non-negative integer, got ${iterations}`);
  }
  if (!Number.isInteger(k) || k < 2) throw new RangeError(`slow model size must be an integer ≥ 2, got ${k}`);

  const next = mulberry32(1234);
  const s0 = new Float32Array(k * k);
  for (let i = 0; i < s0.length; i++) s0[i] = next() * 0.5;
  s0[k + 1] = 1;
  const permutation = new Float32Array(k * k);
  for (let i = 0; i < k; i++) permutation[i * k + ((i + 1) % k)] = 1;

  const body = {
    name: "slow_body",
    node: [
      node("Identity", ["cond_in"], ["cond_out"]),
      node("MatMul", ["s_in", "permutation"], ["s_out"]),
      node("Identity", ["v_in"], ["v_out"]),
    ],
    input: [
      valueInfo({ name: "iter", dtype: "int64", shape: [] }),
      valueInfo({ name: "cond_in", dtype: "bool", shape: [] }),
      valueInfo({ name: "s_in", dtype: "float32", shape: [k, k] }),
      valueInfo({ name: "v_in", dtype: "float32", shape: ["N", 1] }),
    ],
    output: [
      valueInfo({ name: "cond_out", dtype: "bool", shape: [] }),
      valueInfo({ name: "s_out", dtype: "float32", shape: [k, k] }),
      valueInfo({ name: "v_out", dtype: "float32", shape: ["N", 1] }),
    ],
  };

  return encodeModel(
    makeModel({
      graphName: "citadel_slow",
      nodes: [
        // An empty name skips Loop's optional `cond` input: the trip count alone bounds the loop.
        node("Loop", ["trip_count", "", "s0", "x"], ["s_final", "x_final"], [graphAttr("body", body)]),
        node("ReduceMax", ["s_final"], ["s_max"], [intAttr("keepdims", 0)]),
        node("Add", ["x_final", "s_max"], ["y"]),
      ],
      inputs: [{ name: "x", dtype: "float32", shape: ["N", 1] }],
      outputs: [{ name: "y", dtype: "float32", shape: ["N", 1] }],
      initializers: [
        int64Tensor("trip_count", [], [iterations]),
        floatTensor("s0", [k, k], s0),
        floatTensor("permutation", [k, k], permutation),
      ],
      docString: `citadel slow model: ${iterations} iterations of a ${k}x${k} MatMul; y = x + 1`,
    }),
  );
}
