import type { ManifestBody } from "@citadel/contracts";
import { allocate, elementCount, type Tensor } from "@citadel/tensors";

/**
 * A model's health probe: one sample of synthetic input (no tenant's bytes) in shapes
 * the model is known to take. When a job fails alone, the probe tells whose fault it
 * was: the model runs the probe, so the job's input is at fault (INPUT_FAULT, not
 * retried, not counted by the circuit breaker); the model fails the probe too, so the
 * model is (the circuit counts it). One tenant's poison inputs then never pause a
 * model for everyone, and a poison job at the head of the queue is not what decides
 * whether a paused model comes back.
 */

/** Input shapes of one sample (batch axis 1) of a job, by input name: what a probe is shaped after. */
export type ProbeShapes = Readonly<Record<string, readonly number[]>>;

/** The shapes of `tensors` with every batch axis set to 1 (unbatched inputs as they are). */
export function probeShapes(
  manifest: Pick<ManifestBody, "inputs">,
  tensors: Readonly<Record<string, Tensor>>,
): ProbeShapes {
  const shapes: Record<string, number[]> = {};
  for (const spec of manifest.inputs) {
    const t = tensors[spec.name];
    if (t) shapes[spec.name] = t.shape.map((d, axis) => (axis === spec.batchAxis ? 1 : d));
  }
  return shapes;
}

/**
 * Feeds of one sample in `shapes`, every element the value nearest 0 that the input's
 * range allows (0 for bool); null when no such value can be written in the dtype (a
 * half-precision input whose range excludes 0) or a shape is missing.
 */
export function probeFeeds(manifest: Pick<ManifestBody, "inputs">, shapes: ProbeShapes): Record<string, Tensor> | null {
  const feeds: Record<string, Tensor> = {};
  for (const spec of manifest.inputs) {
    const shape = shapes[spec.name];
    if (!shape) return null;
    const [lo, hi] = spec.range ?? [0, 0];
    const value = lo > 0 ? lo : hi < 0 ? hi : 0;
    const integer = spec.dtype.startsWith("int") || spec.dtype.startsWith("uint");
    const v = integer ? (value > 0 ? Math.ceil(value) : Math.floor(value)) : value;
    if (v !== 0 && (spec.dtype === "float16" || spec.dtype === "bfloat16" || spec.dtype === "bool")) return null;
    const data = allocate(spec.dtype, elementCount(shape, spec.name));
    if (v !== 0) {
      if (data instanceof BigInt64Array) data.fill(BigInt(v));
      else (data as Exclude<typeof data, BigInt64Array>).fill(v);
    }
    feeds[spec.name] = { dtype: spec.dtype, shape: [...shape], data };
  }
  return feeds;
}
