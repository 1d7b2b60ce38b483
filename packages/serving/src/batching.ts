import type { EncodedTensor, ManifestBody, OutputPolicy } from "@citadel/contracts";
import { applyOutputPolicy, concat, encodeTensor, mergePolicies, split, type Tensor } from "@citadel/tensors";

/** A job's validated inputs as they wait to be batched. */
export interface BatchItem {
  tensors: Record<string, Tensor>;
  batch: number;
  outputs: string[];
  policy?: OutputPolicy;
}

/**
 * Two jobs can share a run when every input without a batch axis is identical
 * (e.g. a scalar parameter): those are fed once, not concatenated.
 */
export function compatible(manifest: ManifestBody, a: BatchItem, b: BatchItem): boolean {
  for (const spec of manifest.inputs) {
    if (spec.batchAxis !== null) continue;
    const x = a.tensors[spec.name];
    const y = b.tensors[spec.name];
    if (!x || !y || !sameBytes(x, y)) return false;
  }
  return true;
}

function sameBytes(x: Tensor, y: Tensor): boolean {
  if (x.shape.join() !== y.shape.join()) return false;
  return Buffer.from(x.data.buffer, x.data.byteOffset, x.data.byteLength).equals(
    Buffer.from(y.data.buffer, y.data.byteOffset, y.data.byteLength),
  );
}

/** One set of feeds for the whole batch: batched inputs concatenated along their axis. */
export function buildFeeds(manifest: ManifestBody, items: readonly BatchItem[]): Record<string, Tensor> {
  const feeds: Record<string, Tensor> = {};
  for (const spec of manifest.inputs) {
    const parts = items.map((i) => i.tensors[spec.name]).filter((t): t is Tensor => t !== undefined);
    feeds[spec.name] = spec.batchAxis === null ? (parts[0] as Tensor) : concat(parts, spec.batchAxis);
  }
  return feeds;
}

/** The union of outputs the batch's jobs asked for, in manifest order. */
export function outputsFor(manifest: ManifestBody, items: readonly BatchItem[]): string[] {
  const wanted = new Set(items.flatMap((i) => i.outputs));
  return manifest.outputs.map((o) => o.name).filter((n) => wanted.has(n));
}

/**
 * Cuts the batch's outputs back into one result per job, keeps only what each job
 * asked for, and applies the output policy (the model's, tightened by the tenant's).
 */
export function splitResults(
  manifest: ManifestBody,
  items: readonly BatchItem[],
  outputs: Record<string, Tensor>,
): Record<string, EncodedTensor>[] {
  const sizes = items.map((i) => i.batch);
  const perJob: Record<string, Tensor>[] = items.map(() => ({}));
  for (const spec of manifest.outputs) {
    const t = outputs[spec.name];
    if (!t) continue;
    const parts = spec.batchAxis === null || items.length === 1 ? items.map(() => t) : split(t, spec.batchAxis, sizes);
    parts.forEach((p, k) => {
      const job = perJob[k];
      if (job && items[k]?.outputs.includes(spec.name)) job[spec.name] = p;
    });
  }
  return perJob.map((outs, k) => {
    const policy = mergePolicies(manifest.outputPolicy, items[k]?.policy);
    const shaped = applyOutputPolicy(outs, policy);
    const encoded: Record<string, EncodedTensor> = {};
    for (const [name, t] of Object.entries(shaped)) encoded[name] = encodeTensor(t);
    return encoded;
  });
}
