/**
 * The batch sizes the bench seals into a model's manifest, from onnxruntime alone's
 * samples/s by batch size on this machine (the limit row).
 */

/**
 * How much faster per sample a smaller run must be to be worth running a batch in parts:
 * beyond the limit's own noise (a few %). On one VM, PaddleOCR in runs of 8 (4.6% faster
 * alone than 16) gave Citadel's 16-sample row about 3% more; heavy conv in runs of 1
 * (1.8% faster alone) cost it 9%.
 */
export const RUN_BATCH_GAIN = 1.03;

export interface LimitByBatch {
  /** The batch size onnxruntime alone ran fastest at, and its samples/s. */
  bestBatch: number;
  samplesPerSec: number;
  /** samples/s at each batch size measured. */
  byBatch: Record<number, number>;
}

/**
 * maxBatch: the best batch, and at least `least` (the 16-sample jobs). runBatch, as an
 * operator tuning the model for the machine would set it: the best batch, only where
 * onnxruntime alone is clearly faster per sample there than at maxBatch. Every run has
 * a fixed cost (thread messages, session.run's set-up), so a batch cut into runs that
 * are no faster per sample is slower.
 */
export function manifestBatches(l: LimitByBatch, least: number): { maxBatch: number; runBatch?: number } {
  const maxBatch = Math.max(least, l.bestBatch);
  const atMax = l.byBatch[maxBatch];
  const worth = l.bestBatch < maxBatch && atMax !== undefined && l.samplesPerSec >= RUN_BATCH_GAIN * atMax;
  return worth ? { maxBatch, runBatch: l.bestBatch } : { maxBatch };
}
