import { CitadelError, type ManifestBody } from "@citadel/contracts";
import type { RunResult } from "@citadel/runtime";
import { concat, type Tensor } from "@citadel/tensors";
import { describe, expect, it } from "vitest";
import { type BatchRunner, partSizes, runInParts, samplesPerRun } from "./run-parts.js";

// y = x * w over x[N,2] with w[2] unbatched (fed whole to every run).
const manifest = {
  inputs: [
    { name: "x", dtype: "float32", shape: [null, 2], batchAxis: 0 },
    { name: "w", dtype: "float32", shape: [2], batchAxis: null },
  ],
  outputs: [{ name: "y", dtype: "float32", shape: [null, 2], batchAxis: 0 }],
} as unknown as Pick<ManifestBody, "inputs" | "outputs">;

/** Takes its feeds as ModelRunner does: the buffers are transferred (detached here). */
class TransferringRunner implements BatchRunner {
  sizes: number[] = [];
  starts = 0;
  constructor(private readonly failAt = -1) {}
  async run(feeds: Record<string, Tensor>, _o: string[], _t: number, _s?: AbortSignal, onStart?: () => void) {
    onStart?.();
    const k = this.sizes.length;
    const buffers = Object.values(feeds).map((t) => t.data.buffer as ArrayBuffer);
    const [x, w] = structuredClone([feeds.x, feeds.w], { transfer: buffers }) as [Tensor, Tensor];
    this.sizes.push(x.shape[0] ?? 0);
    if (k === this.failAt) throw new CitadelError("RUNTIME_ERROR", `inference failed in run ${k}`);
    if (k > this.failAt && this.failAt >= 0) throw new CitadelError("RUNTIME_ERROR", "the runner stopped");
    const xs = x.data as Float32Array;
    const ws = w.data as Float32Array;
    const y = xs.map((v, i) => v * (ws[i % 2] ?? 0));
    return { outputs: { y: { dtype: "float32", shape: x.shape, data: y } }, ms: 2 } satisfies RunResult;
  }
}

const feeds = (n: number): Record<string, Tensor> => ({
  x: { dtype: "float32", shape: [n, 2], data: Float32Array.from({ length: 2 * n }, (_, i) => i) },
  w: { dtype: "float32", shape: [2], data: Float32Array.of(10, 100) },
});

describe("samplesPerRun", () => {
  const m = { ...manifest, maxBatch: 8 };
  it("is the manifest's runBatch, else its maxBatch; a model that cannot batch runs whole", () => {
    expect(samplesPerRun(m)).toBe(8);
    expect(samplesPerRun({ ...m, runBatch: 4 })).toBe(4);
    const reduction = { ...m, runBatch: 4, outputs: [{ ...manifest.outputs[0], batchAxis: null }] };
    expect(samplesPerRun(reduction as typeof m)).toBe(Number.POSITIVE_INFINITY);
  });
});

describe("partSizes", () => {
  it("cuts samples into runs of at most the run size", () => {
    expect(partSizes(16, 4)).toEqual([4, 4, 4, 4]);
    expect(partSizes(10, 4)).toEqual([4, 4, 2]);
    expect(partSizes(4, 4)).toEqual([4]);
    expect(partSizes(3, 4)).toEqual([3]);
  });
});

describe("runInParts", () => {
  it("runs each part with its own copy of the unbatched inputs and joins the outputs in order", async () => {
    const runner = new TransferringRunner();
    let started = 0;
    const r = await runInParts(runner, manifest, feeds(5), ["y"], [2, 2, 1], 1000, new AbortController().signal, () => {
      started++;
    });
    expect(runner.sizes).toEqual([2, 2, 1]);
    expect(started).toBe(1);
    expect(r.outputs.y?.shape).toEqual([5, 2]);
    expect(Array.from(r.outputs.y?.data as Float32Array)).toEqual([0, 100, 20, 300, 40, 500, 60, 700, 80, 900]);
    expect(r.runs).toEqual([
      { samples: 2, ms: 2 },
      { samples: 2, ms: 2 },
      { samples: 1, ms: 2 },
    ]);
    expect(r.ms).toBe(6);
  });

  it("fails with the first run's error in order, not an echo from a later run", async () => {
    const runner = new TransferringRunner(1);
    const p = runInParts(runner, manifest, feeds(6), ["y"], [2, 2, 2], 1000, new AbortController().signal, () => {});
    await expect(p).rejects.toThrow("inference failed in run 1");
  });

  it("frees a batch's concatenated feed once every part is cut, and leaves an unbatched feed (a job's) alone", async () => {
    const job = feeds(5);
    // As the executor builds it: two jobs' samples concatenated into a buffer of the batch's own.
    const batch = { x: concat([job.x as Tensor, job.x as Tensor], 0), w: job.w as Tensor };
    const r = await runInParts(
      new TransferringRunner(),
      manifest,
      batch,
      ["y"],
      [4, 4, 2],
      1000,
      new AbortController().signal,
      () => {},
    );
    expect(r.outputs.y?.shape).toEqual([10, 2]);
    expect(batch.x.data.length).toBe(0);
    expect(Array.from(batch.w.data as Float32Array)).toEqual([10, 100]);
    // A plain array (not made by concat, nor a job's own buffer) is not the batch's to free.
    const plain = feeds(4);
    await runInParts(
      new TransferringRunner(),
      manifest,
      plain,
      ["y"],
      [2, 2],
      1000,
      new AbortController().signal,
      () => {},
    );
    expect(plain.x?.data.length).toBe(8);
  });

  it("hands a group within one run to the runner as it is", async () => {
    const runner = new TransferringRunner();
    const r = await runInParts(runner, manifest, feeds(3), ["y"], [3], 1000, new AbortController().signal, () => {});
    expect(runner.sizes).toEqual([3]);
    expect(r.runs).toEqual([{ samples: 3, ms: 2 }]);
  });
});
