import { CitadelError, type ManifestBody } from "@citadel/contracts";
import type { ModelRunner, RunResult } from "@citadel/runtime";
import type { Tensor } from "@citadel/tensors";
import { canBatch } from "./batcher.js";

/**
 * A batch run as several runs of at most the manifest's runBatch samples, when the
 * runner is faster per sample at that size than at maxBatch (CPUs often are: cache).
 * The batch's feeds are cut along the batch axis (across job boundaries), run part by
 * part and the outputs joined back (in the runner's thread), so the executor still cuts
 * one result per job.
 * Only for models whose jobs may share runs (canBatch): every output has a batch axis,
 * so a sample's outputs depend on that sample alone and the cut cannot change a result.
 */

/** Samples per onnxruntime run: the manifest's runBatch (else maxBatch); a model that cannot batch runs each batch whole. */
export function samplesPerRun(m: Pick<ManifestBody, "inputs" | "outputs" | "maxBatch" | "runBatch">): number {
  return canBatch(m) ? (m.runBatch ?? m.maxBatch) : Number.POSITIVE_INFINITY;
}

/** What the executor needs of a runner: ModelRunner's run (a fake in unit tests). */
export type BatchRunner = Pick<ModelRunner, "run">;

/** The sample counts of the runs `samples` takes at `perRun` per run: 16 at 4 → [4, 4, 4, 4]; 10 at 4 → [4, 4, 2]. */
export function partSizes(samples: number, perRun: number): number[] {
  if (samples <= perRun || perRun < 1) return [samples];
  const sizes: number[] = [];
  for (let left = samples; left > 0; left -= perRun) sizes.push(Math.min(perRun, left));
  return sizes;
}

export interface PartsResult extends Pick<RunResult, "outputs" | "ms"> {
  /** Each run's samples and time inside session.run, in order. */
  runs: { samples: number; ms: number }[];
}

/**
 * Runs `feeds` as runs of `sizes` samples: one message to the runner, which cuts the
 * batch along each input's batch axis (views, no copy, where the samples are contiguous),
 * runs the parts back to back, so no other batch runs between them, and joins each
 * output back along its own; `onStart` fires when the first begins, and each part is held
 * to `timeoutMs` from its own start. One answer comes back whatever the number of parts:
 * each part as a message through the worker's main thread (and its input copied out of
 * the batch) cost that thread about a tenth of its time on a 16-sample job in runs of 4.
 */
export async function runInParts(
  runner: BatchRunner,
  manifest: Pick<ManifestBody, "inputs" | "outputs">,
  feeds: Record<string, Tensor>,
  outputs: string[],
  sizes: readonly number[],
  timeoutMs: number,
  signal: AbortSignal,
  onStart: () => void,
): Promise<PartsResult> {
  if (sizes.length === 1) {
    const r = await runner.run(feeds, outputs, timeoutMs, signal, onStart);
    return { outputs: r.outputs, ms: r.ms, runs: [{ samples: sizes[0] ?? 0, ms: r.ms }] };
  }
  const axes = (specs: readonly { name: string; batchAxis: number | null }[]) =>
    Object.fromEntries(specs.map((spec) => [spec.name, spec.batchAxis]));
  const r = await runner.run(feeds, outputs, timeoutMs, signal, onStart, {
    sizes: [...sizes],
    inputAxes: axes(manifest.inputs),
    outputAxes: axes(manifest.outputs),
  });
  const times = r.runs ?? [r.ms];
  if (times.length !== sizes.length)
    throw new CitadelError("INTERNAL", `the runner ran ${times.length} part(s) of a batch cut into ${sizes.length}`);
  const runs = times.map((ms, k) => ({ samples: sizes[k] ?? 0, ms }));
  return { outputs: r.outputs, ms: r.ms, runs };
}
