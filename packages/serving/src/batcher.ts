import { createHash } from "node:crypto";
import type { ManifestBody } from "@citadel/contracts";
import type { Tensor } from "@citadel/tensors";

/**
 * The dynamic batcher: which jobs may share a run, and when a batch closes. Pure (no
 * Redis, no onnxruntime, time passed in), so every rule is unit-tested with a fake
 * clock — read this file to know what can end up in one run.
 *
 * Like Triton's dynamic batcher with equal-shape enforcement: jobs share a run only
 * when they are of the same version and every input matches off the batch axis —
 * batched inputs in dtype and every non-batch dimension, unbatched inputs (fed once
 * for the whole run) in their bytes. A job that cannot join waits for the next batch
 * of its own kind; it never delays or reshapes another.
 */

/** Whether a model's jobs can share runs at all. */
export function canBatch(m: Pick<ManifestBody, "inputs" | "outputs" | "maxBatch">): boolean {
  // An output without a batch axis is computed over the whole run (e.g. a reduction
  // across samples): shared, it would hand one job a value made from another job's
  // input. Such models run one job at a time.
  return m.maxBatch > 1 && m.inputs.some((i) => i.batchAxis !== null) && m.outputs.every((o) => o.batchAxis !== null);
}

/**
 * A key equal for two jobs exactly when they may share a run: version, then per input
 * its dtype and shape with the batch axis blanked out, or (no batch axis) a digest of
 * its bytes.
 */
export function batchKey(
  m: Pick<ManifestBody, "version" | "inputs">,
  tensors: Readonly<Record<string, Tensor>>,
): string {
  const parts = [m.version];
  for (const spec of m.inputs) {
    const t = tensors[spec.name];
    if (!t) {
      parts.push(`${spec.name}:absent`);
      continue;
    }
    if (spec.batchAxis !== null) {
      parts.push(`${spec.name}:${t.dtype}[${t.shape.map((d, i) => (i === spec.batchAxis ? "*" : d)).join(",")}]`);
    } else {
      const digest = createHash("sha256")
        .update(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))
        .digest("base64url");
      parts.push(`${spec.name}:${t.dtype}[${t.shape.join(",")}]=${digest}`);
    }
  }
  return parts.join("|");
}

export interface BatcherOptions {
  /** Samples per batch (the manifest's maxBatch); 1 when the model cannot batch. */
  maxSamples: number;
  /** How long the first job of a batch may wait for company (the manifest's maxQueueDelayMs). */
  maxDelayMs: number;
}

/** A closed batch: jobs that share one run. */
export interface Batch<T> {
  key: string;
  items: T[];
  samples: number;
  /** When its first job arrived. */
  since: number;
}

/**
 * Groups jobs by {@link batchKey}. A group closes when it is full (adding the next job
 * would pass `maxSamples`), when its first job has waited `maxDelayMs`, or on a flush.
 * Of the groups that may run, the one whose first job came first runs first, full or
 * not: a lone job of an odd shape that is due goes before full batches that formed
 * after it, so a stream of full batches (one tenant's) never holds it past its delay.
 */
export class DynamicBatcher<T> {
  private readonly open = new Map<string, Batch<T>>();
  private readonly closed: Batch<T>[] = [];
  private jobs = 0;
  private samplesHeld = 0;

  constructor(private readonly o: BatcherOptions) {}

  /** Jobs held (open and closed groups). */
  get size(): number {
    return this.jobs;
  }

  /** Samples one run may take. */
  get maxSamples(): number {
    return this.o.maxSamples;
  }

  /** Samples held (open and closed groups). */
  get samples(): number {
    return this.samplesHeld;
  }

  add(item: T, key: string, samples: number, now: number): void {
    this.jobs++;
    this.samplesHeld += samples;
    let g = this.open.get(key);
    if (g && g.samples + samples > this.o.maxSamples) {
      this.close(g);
      g = undefined;
    }
    if (!g) {
      g = { key, items: [], samples: 0, since: now };
      this.open.set(key, g);
    }
    g.items.push(item);
    g.samples += samples;
    if (g.samples >= this.o.maxSamples) this.close(g);
  }

  /** The next batch that may run at `now` (full, or waited long enough), or null. `flush`: take any open group too. */
  take(now: number, flush = false): Batch<T> | null {
    const next = this.pick(now, flush);
    if (!next) return null;
    const i = this.closed.indexOf(next);
    if (i >= 0) this.closed.splice(i, 1);
    else this.open.delete(next.key);
    this.jobs -= next.items.length;
    this.samplesHeld -= next.samples;
    return next;
  }

  /** When the first job of the batch `take(now, flush)` would return arrived; null if none may run. */
  readySince(now: number, flush = false): number | null {
    return this.pick(now, flush)?.since ?? null;
  }

  /** When the next batch can be taken: now if one is closed, else when the oldest open one times out; null if empty. */
  readyAt(): number | null {
    if (this.closed.length > 0) return Number.NEGATIVE_INFINITY;
    const oldest = this.oldestOpen();
    return oldest ? oldest.since + this.o.maxDelayMs : null;
  }

  /** Of the closed groups and the open ones due at `now` (every open one with `flush`), the one whose first job came first. */
  private pick(now: number, flush: boolean): Batch<T> | undefined {
    let best: Batch<T> | undefined;
    for (const g of this.closed) if (!best || g.since < best.since) best = g;
    for (const g of this.open.values()) {
      const due = flush || now - g.since >= this.o.maxDelayMs;
      if (due && (!best || g.since < best.since)) best = g;
    }
    return best;
  }

  private oldestOpen(): Batch<T> | undefined {
    let oldest: Batch<T> | undefined;
    for (const g of this.open.values()) if (!oldest || g.since < oldest.since) oldest = g;
    return oldest;
  }

  private close(g: Batch<T>): void {
    this.open.delete(g.key);
    this.closed.push(g);
  }
}
