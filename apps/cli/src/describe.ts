import { DType, type ManifestBody, type TensorSpec } from "@citadel/contracts";
import * as ort from "onnxruntime-node";
import { z } from "zod";

/** The parts of a manifest an operator states; the rest is read from the model. */
export const SealSpec = z.strictObject({
  maxBatch: z.number().int().min(1).default(8),
  maxQueueDelayMs: z.number().int().min(0).max(1000).default(2),
  timeoutMs: z.number().int().min(1).default(5000),
  executionProviders: z.array(z.enum(["tensorrt", "cuda", "cpu"])).default(["cpu"]),
  /** Default batch axis for every tensor whose dimension there is dynamic; null: no batching. */
  batchAxis: z.number().int().min(0).nullable().default(0),
  inputs: z
    .record(
      z.string(),
      z.strictObject({
        range: z.tuple([z.number(), z.number()]).optional(),
        maxDim: z.number().int().min(1).optional(),
        batchAxis: z.number().int().min(0).nullable().optional(),
      }),
    )
    .default({}),
  outputs: z
    .record(z.string(), z.strictObject({ batchAxis: z.number().int().min(0).nullable().optional() }))
    .default({}),
  outputPolicy: z
    .strictObject({
      allowedOutputs: z.array(z.string()).optional(),
      topK: z.number().int().min(1).optional(),
      decimals: z.number().int().min(0).max(8).optional(),
      labelOnly: z.boolean().optional(),
    })
    .default({}),
  tensorrt: z
    .strictObject({
      gpuArch: z.string(),
      minBatch: z.number().int(),
      optBatch: z.number().int(),
      maxBatch: z.number().int(),
    })
    .optional(),
});
export type SealSpec = z.infer<typeof SealSpec>;
export type SealSpecInput = z.input<typeof SealSpec>;

export interface IoDescription {
  name: string;
  type: string;
  shape: (number | string)[];
}

function toSpec(
  io: IoDescription,
  batchAxis: number | null,
  extra: { range?: [number, number]; maxDim?: number },
): TensorSpec {
  const dtype = DType.safeParse(io.type);
  if (!dtype.success) throw new Error(`tensor '${io.name}' has dtype ${io.type}, which Citadel does not serve`);
  const shape = io.shape.map((d) => (typeof d === "number" && d > 0 ? d : null));
  const axis = batchAxis !== null && batchAxis < shape.length && shape[batchAxis] === null ? batchAxis : null;
  return { name: io.name, dtype: dtype.data, shape, batchAxis: axis, ...extra };
}

/** Builds the manifest's I/O from the model's own metadata plus the operator's spec. */
export function describeIo(
  inputs: IoDescription[],
  outputs: IoDescription[],
  spec: SealSpec,
): Pick<ManifestBody, "inputs" | "outputs" | "maxBatch"> {
  const ins = inputs.map((i) => {
    const o = spec.inputs[i.name] ?? {};
    return toSpec(i, o.batchAxis === undefined ? spec.batchAxis : o.batchAxis, {
      ...(o.range ? { range: o.range } : {}),
      ...(o.maxDim ? { maxDim: o.maxDim } : {}),
    });
  });
  for (const name of Object.keys(spec.inputs)) {
    if (!inputs.some((i) => i.name === name))
      throw new Error(`spec names input '${name}', which the model does not have`);
  }
  const outs = outputs.map((o) => {
    const s = spec.outputs[o.name] ?? {};
    return toSpec(o, s.batchAxis === undefined ? spec.batchAxis : s.batchAxis, {});
  });
  const batched = ins.some((i) => i.batchAxis !== null);
  return { inputs: ins, outputs: outs, maxBatch: batched ? spec.maxBatch : 1 };
}

/** Reads I/O metadata with onnxruntime, from memory (the plaintext never touches disk). */
export async function inspectWithOrt(
  model: Uint8Array,
): Promise<{ inputs: IoDescription[]; outputs: IoDescription[] }> {
  const session = await ort.InferenceSession.create(model, { executionProviders: ["cpu"] });
  const pick = (m: readonly ort.InferenceSession.ValueMetadata[]) =>
    m.map((v) => ({ name: v.name, type: v.isTensor ? v.type : "non-tensor", shape: v.isTensor ? [...v.shape] : [] }));
  const r = { inputs: pick(session.inputMetadata), outputs: pick(session.outputMetadata) };
  await session.release();
  return r;
}
