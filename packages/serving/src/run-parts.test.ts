import { CitadelError, type ManifestBody } from "@citadel/contracts";
import type { RunParts, RunResult } from "@citadel/runtime";
import type { Tensor } from "@citadel/tensors";
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

/** Records what ModelRunner would be handed, and answers y = x * w for the whole batch (its thread would join the parts' outputs to the same). */
class RecordingRunner implements BatchRunner {
  calls: { samples: number; parts: RunParts | undefined }[] = [];
  constructor(private readonly answerRuns?: number) {}
  async run(
    feeds: Record<string, Tensor>,
    _o: string[],
    _t: number,
    _s?: AbortSignal,
    onStart?: () => void,
    parts?: RunParts,
  ): Promise<RunResult> {
    onStart?.();
    const x = feeds.x as Tensor;
    const w = feeds.w as Tensor;
    this.calls.push({ samples: x.shape[0] ?? 0, parts });
    const ws = w.data as Float32Array;
    const y = (x.data as Float32Array).map((v, i) => v * (ws[i % 2] ?? 0));
    const n = this.answerRuns ?? parts?.sizes.length ?? 1;
    const runs = n > 1 ? { runs: Array.from({ length: n }, () => 2) } : {};
    return { outputs: { y: { dtype: "float32", shape: x.shape, data: y } }, ms: 2 * n, ...runs };
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
  it("hands the runner the whole batch once, with the part sizes and every input's and output's batch axis", async () => {
    const runner = new RecordingRunner();
    let started = 0;
    const r = await runInParts(runner, manifest, feeds(5), ["y"], [2, 2, 1], 1000, new AbortController().signal, () => {
      started++;
    });
    expect(runner.calls).toEqual([
      { samples: 5, parts: { sizes: [2, 2, 1], inputAxes: { x: 0, w: null }, outputAxes: { y: 0 } } },
    ]);
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

  it("refuses an answer that does not account for every part", async () => {
    const p = runInParts(
      new RecordingRunner(2),
      manifest,
      feeds(6),
      ["y"],
      [2, 2, 2],
      1000,
      new AbortController().signal,
      () => {},
    );
    await expect(p).rejects.toMatchObject({ code: "INTERNAL" });
  });

  it("passes the runner's failure on as it is", async () => {
    const failing: BatchRunner = {
      run: async () => {
        throw new CitadelError("RUNTIME_ERROR", "inference failed in run 1");
      },
    };
    const p = runInParts(failing, manifest, feeds(6), ["y"], [2, 2, 2], 1000, new AbortController().signal, () => {});
    await expect(p).rejects.toThrow("inference failed in run 1");
  });

  it("hands a group within one run to the runner as it is, without parts", async () => {
    const runner = new RecordingRunner();
    const r = await runInParts(runner, manifest, feeds(3), ["y"], [3], 1000, new AbortController().signal, () => {});
    expect(runner.calls).toEqual([{ samples: 3, parts: undefined }]);
    expect(r.runs).toEqual([{ samples: 3, ms: 2 }]);
  });
});
