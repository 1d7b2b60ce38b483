import type { TensorSpec } from "@citadel/contracts";
import type { Tensor } from "@citadel/tensors";
import { describe, expect, it } from "vitest";
import { batchKey, canBatch, DynamicBatcher } from "./batcher.js";

const image = (n: number, h: number, w: number): Tensor => ({
  dtype: "float32",
  shape: [n, 3, h, w],
  data: new Float32Array(n * 3 * h * w),
});
const detector = {
  version: "1",
  maxBatch: 8,
  inputs: [{ name: "x", dtype: "float32", shape: [null, 3, null, null], batchAxis: 0, maxDim: 1024 }] as TensorSpec[],
  outputs: [{ name: "y", dtype: "float32", shape: [null, 2, null, null], batchAxis: 0 }] as TensorSpec[],
};

describe("which jobs may share a run", () => {
  it("only jobs whose batched inputs match in every non-batch dimension", () => {
    const k = (t: Tensor) => batchKey(detector, { x: t });
    expect(k(image(1, 32, 48))).toBe(k(image(4, 32, 48)));
    expect(k(image(1, 32, 48))).not.toBe(k(image(1, 48, 32)));
    expect(k(image(1, 32, 48))).not.toBe(k(image(1, 32, 64)));
    expect(k(image(1, 32, 48))).not.toBe(k(image(1, 33, 48)));
  });

  it("only jobs of the same version", () => {
    expect(batchKey(detector, { x: image(1, 8, 8) })).not.toBe(
      batchKey({ ...detector, version: "2" }, { x: image(1, 8, 8) }),
    );
  });

  it("on a batch axis that is not the first, the other axes must match", () => {
    const m = {
      version: "1",
      inputs: [{ name: "x", dtype: "float32", shape: [null, null], batchAxis: 1 }] as TensorSpec[],
    };
    const t = (rows: number, n: number): Tensor => ({
      dtype: "float32",
      shape: [rows, n],
      data: new Float32Array(rows * n),
    });
    expect(batchKey(m, { x: t(4, 1) })).toBe(batchKey(m, { x: t(4, 3) }));
    expect(batchKey(m, { x: t(4, 1) })).not.toBe(batchKey(m, { x: t(5, 1) }));
  });

  it("only jobs whose unbatched inputs (fed once per run) are byte-identical", () => {
    const m = {
      version: "1",
      inputs: [
        { name: "x", dtype: "float32", shape: [null, 3], batchAxis: 0 },
        { name: "scale", dtype: "float32", shape: [], batchAxis: null },
      ] as TensorSpec[],
    };
    const job = (scale: number, n: number) => ({
      x: { dtype: "float32" as const, shape: [n, 3], data: new Float32Array(n * 3) },
      scale: { dtype: "float32" as const, shape: [], data: Float32Array.of(scale) },
    });
    expect(batchKey(m, job(2, 1))).toBe(batchKey(m, job(2, 5)));
    expect(batchKey(m, job(2, 1))).not.toBe(batchKey(m, job(3, 1)));
  });

  it("never for models whose outputs lack a batch axis, or that cannot batch", () => {
    expect(canBatch(detector)).toBe(true);
    expect(canBatch({ ...detector, maxBatch: 1 })).toBe(false);
    expect(canBatch({ ...detector, outputs: [{ ...detector.outputs[0], batchAxis: null } as TensorSpec] })).toBe(false);
    expect(canBatch({ ...detector, inputs: [{ ...detector.inputs[0], batchAxis: null } as TensorSpec] })).toBe(false);
  });
});

describe("when a batch closes (fake clock)", () => {
  const batcher = () => new DynamicBatcher<string>({ maxSamples: 8, maxDelayMs: 10 });

  it("holds a batch until its first job has waited the max delay", () => {
    const b = batcher();
    b.add("a", "k", 1, 100);
    b.add("b", "k", 2, 105);
    expect(b.take(109)).toBeNull();
    expect(b.readyAt()).toBe(110);
    expect(b.take(110)).toEqual({ key: "k", items: ["a", "b"], samples: 3, since: 100 });
    expect(b.size).toBe(0);
    expect(b.readyAt()).toBeNull();
  });

  it("closes at once when the sample bound is reached, and never passes it", () => {
    const b = batcher();
    b.add("a", "k", 5, 0);
    b.add("b", "k", 4, 1); // 9 > 8: "a" closes alone, "b" starts the next batch
    b.add("c", "k", 4, 2); // 8: full
    expect(b.take(2)?.items).toEqual(["a"]);
    expect(b.take(2)?.items).toEqual(["b", "c"]);
    expect(b.take(2)).toBeNull();
  });

  it("keeps jobs of other shapes apart; each kind runs on its own clock, oldest first", () => {
    const b = batcher();
    b.add("small-1", "32x32", 1, 0);
    b.add("large-1", "64x64", 1, 3);
    b.add("small-2", "32x32", 1, 4);
    expect(b.samples).toBe(3);
    expect(b.take(10)?.items).toEqual(["small-1", "small-2"]);
    expect(b.take(12)).toBeNull();
    expect(b.take(13)?.items).toEqual(["large-1"]);
  });

  it("a due batch of another kind goes before full batches that formed after it (no one waits past its delay behind a stream)", () => {
    // Tenant B's lone job of an odd shape, then tenant A's stream of full batches.
    const b = batcher();
    b.add("odd", "48x48", 1, 0);
    let t = 20;
    for (let i = 0; i < 3; i++, t += 10) b.add(`full-${i}`, "32x32", 8, t);
    expect(b.readyAt()).toBe(Number.NEGATIVE_INFINITY);
    expect(b.readySince(5)).toBe(20); // "odd" is not due yet: the full batch may run
    expect(b.readySince(10)).toBe(0);
    expect(b.take(40)?.items).toEqual(["odd"]);
    expect(b.take(40)?.items).toEqual(["full-0"]);
    // A full batch that closed before the odd job arrived still goes first.
    const c = batcher();
    c.add("full", "32x32", 8, 0);
    c.add("odd", "48x48", 1, 1);
    expect(c.take(20)?.items).toEqual(["full"]);
    expect(c.take(20)?.items).toEqual(["odd"]);
  });

  it("flush takes the oldest batch before its delay", () => {
    const b = batcher();
    b.add("x", "k2", 1, 5);
    b.add("y", "k1", 1, 2);
    expect(b.take(3, true)?.items).toEqual(["y"]);
    expect(b.take(3, true)?.items).toEqual(["x"]);
  });

  it("a model that cannot batch: one job per batch, no delay", () => {
    const b = new DynamicBatcher<string>({ maxSamples: 1, maxDelayMs: 0 });
    b.add("a", "a", 1, 0);
    b.add("b", "b", 1, 0);
    expect(b.take(0)?.items).toEqual(["a"]);
    expect(b.take(0)?.items).toEqual(["b"]);
  });
});
