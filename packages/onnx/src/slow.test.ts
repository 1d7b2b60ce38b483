import ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { buildSlowModel, SLOW_MODEL_TIMINGS } from "./slow.js";

async function timedRun(
  bytes: Uint8Array,
  x: Float32Array,
): Promise<{ ms: number; y: Float32Array; dims: readonly number[] }> {
  // One intra-op thread: the default pool spin-waits and slows down badly when parallel test files share 2 vCPUs.
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
  try {
    const feeds = { x: new ort.Tensor("float32", x, [x.length, 1]) };
    const start = performance.now();
    const out = await session.run(feeds);
    const ms = performance.now() - start;
    const y = out.y;
    if (!y || !(y.data instanceof Float32Array)) throw new Error("missing float32 output y");
    return { ms, y: y.data, dims: y.dims };
  } finally {
    await session.release();
  }
}

/** The fastest of `n` runs, one after another: load only ever slows a run down. */
async function fastest(n: number, run: () => Promise<{ ms: number }>): Promise<number> {
  let best = Number.POSITIVE_INFINITY;
  for (let i = 0; i < n; i++) best = Math.min(best, (await run()).ms);
  return best;
}

describe("buildSlowModel", () => {
  it("returns y = x + 1 exactly for N=1 and N=5, and with zero iterations", async () => {
    for (const [iterations, x] of [
      [0, Float32Array.from([0.25])],
      [20, Float32Array.from([1.5, -2, 0, 1e6, -0.125])],
    ] as const) {
      const { y, dims } = await timedRun(buildSlowModel({ iterations, size: 32 }), x);
      expect(dims).toEqual([x.length, 1]);
      expect(Array.from(y)).toEqual(Array.from(x, (v) => Math.fround(v + 1)));
    }
  });

  it("run time grows with iterations (the Loop is not folded away)", async () => {
    const x = Float32Array.from([3]);
    // The fastest of a few short runs: a busy machine only ever makes a run slower.
    const short = await fastest(3, () => timedRun(buildSlowModel({ iterations: 20 }), x));
    const long = await timedRun(buildSlowModel({ iterations: 600 }), x);
    expect(Array.from(long.y)).toEqual([4]);
    // 30× the work; allow a noisy, shared machine plenty of slack.
    expect(long.ms).toBeGreaterThan(short * 5);
  });

  it("the calibrated ≈3 s value runs its whole loop: many times a 200-iteration run (runs once)", async () => {
    const x = Float32Array.from([41]);
    // Relative to a shorter run on the same machine, so a faster (or busier) machine does not change the outcome.
    const ref = await fastest(2, () => timedRun(buildSlowModel({ iterations: 200 }), x));
    const iterations = SLOW_MODEL_TIMINGS.singleThread.iterationsFor3s;
    const { ms, y } = await timedRun(buildSlowModel({ iterations }), x);
    expect(Array.from(y)).toEqual([42]);
    // 40× the work of the reference run.
    expect(ms).toBeGreaterThan(ref * (iterations / 200 / 4));
  });

  it("rejects bad options", () => {
    expect(() => buildSlowModel({ iterations: -1 })).toThrow(RangeError);
    expect(() => buildSlowModel({ iterations: 1.5 })).toThrow(RangeError);
    expect(() => buildSlowModel({ iterations: 1, size: 1 })).toThrow(RangeError);
  });
});
