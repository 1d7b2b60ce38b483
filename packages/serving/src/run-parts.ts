import { CitadelError, type ManifestBody } from "@citadel/contracts";
import type { ModelRunner, RunResult } from "@citadel/runtime";
import { concat, release, split, type Tensor } from "@citadel/tensors";
import { canBatch } from "./batcher.js";

/**
 * A batch run as several runs of at most the manifest's runBatch samples, when the
 * runner is faster per sample at that size than at maxBatch (CPUs often are: cache).
 * The batch's feeds are cut along the batch axis (across job boundaries), run part by
 * part and the outputs joined back, so the executor still cuts one result per job.
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

export interface PartsResult extends RunResult {
  /** Each run's samples and time inside session.run, in order. */
  runs: { samples: number; ms: number }[];
}

/**
 * Runs `feeds` as runs of `sizes` samples. The runs are queued back to back at once, so
 * no other batch runs between them; `onStart` fires when the first begins. The first
 * run to fail (in order) fails the whole: a later run's RunnerGoneError only echoes it.
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
    return { ...r, runs: [{ samples: sizes[0] ?? 0, ms: r.ms }] };
  }
  const parts: Record<string, Tensor>[] = sizes.map(() => ({}));
  for (const spec of manifest.inputs) {
    const t = feeds[spec.name];
    if (!t) continue;
    // Unbatched inputs go whole to every run, each its own copy: the runner takes the
    // bytes it is handed (transfers the buffer), so one copy cannot feed two runs.
    const cut =
      spec.batchAxis === null ? sizes.map(() => ({ ...t, data: t.data.slice() })) : split(t, spec.batchAxis, sizes);
    cut.forEach((c, k) => {
      const part = parts[k];
      if (part) part[spec.name] = c;
    });
  }
  // Every part is cut (copied): the batched feeds are freed now, not when a mark-compact
  // finds them after the runs (release.ts). Each is this batch's concatenation, or a lone
  // job's own input buffer, whose bytes go with its runs (the executor requeues such a job
  // if its runner is gone before they began). An unbatched feed is a job's: left alone.
  for (const spec of manifest.inputs) if (spec.batchAxis !== null) release(feeds[spec.name]?.data);
  const settled = await Promise.allSettled(
    parts.map((p, k) => runner.run(p, outputs, timeoutMs, signal, k === 0 ? onStart : undefined)),
  );
  const results: RunResult[] = [];
  for (const s of settled) {
    if (s.status === "rejected") throw s.reason;
    results.push(s.value);
  }
  const joined: Record<string, Tensor> = {};
  for (const spec of manifest.outputs) {
    const pieces = results.map((r) => r.outputs[spec.name]).filter((t): t is Tensor => t !== undefined);
    if (pieces.length === 0) continue;
    if (pieces.length !== results.length || spec.batchAxis === null)
      throw new CitadelError("INTERNAL", `output '${spec.name}' cannot be joined across runs`);
    joined[spec.name] = concat(pieces, spec.batchAxis);
  }
  const runs = results.map((r, k) => ({ samples: sizes[k] ?? 0, ms: r.ms }));
  return { outputs: joined, ms: runs.reduce((a, r) => a + r.ms, 0), runs };
}
