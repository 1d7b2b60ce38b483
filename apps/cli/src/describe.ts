import { CitadelError, DType, type ManifestBody, type TensorSpec } from "@citadel/contracts";
import { inspectModel } from "@citadel/onnx";
import * as ort from "onnxruntime-node";
import { z } from "zod";

/** The parts of a manifest an operator states; the rest is read from the model. */
export const SealSpec = z
  .strictObject({
    maxBatch: z.number().int().min(1).default(8),
    /** Samples per onnxruntime run, when the runner is faster per sample below maxBatch (see the manifest's runBatch). */
    runBatch: z.number().int().min(1).optional(),
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
          /** Clients send this float32 input as bfloat16; the worker widens it exactly (docs/contract.md#jobs). */
          dtype: z.literal("bfloat16").optional(),
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
  })
  .refine((s) => s.runBatch === undefined || s.runBatch <= s.maxBatch, {
    message: "runBatch must not exceed maxBatch",
    path: ["runBatch"],
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

/**
 * onnxruntime-node has no bfloat16 tensors (it cannot even open a model with bfloat16
 * inputs or outputs), so such a model is refused here, saying what works instead.
 */
function refuseBfloat16(kind: "input" | "output", name: string): CitadelError {
  return new CitadelError(
    "MANIFEST_INVALID",
    kind === "input"
      ? `input '${name}' is bfloat16, which onnxruntime-node cannot feed: export the model with a float32 input and seal it with inputs.${name}.dtype "bfloat16" (clients send bfloat16, the worker widens it to float32 exactly)`
      : `output '${name}' is bfloat16, which onnxruntime-node cannot return: export the model with a float32 or float16 output`,
    { [kind]: name },
  );
}

/** A bfloat16 wire dtype on a float32 model input (the only widening there is). */
function wireDtype(io: IoDescription, wanted: "bfloat16" | undefined): Pick<TensorSpec, "dtype" | "modelDtype"> | null {
  if (wanted === undefined) return null;
  if (io.type !== "float32") {
    throw new CitadelError(
      "MANIFEST_INVALID",
      `input '${io.name}' is ${io.type}: only a float32 input can be sent as bfloat16 (widened exactly)`,
      { input: io.name },
    );
  }
  return { dtype: "bfloat16", modelDtype: "float32" };
}

/** Builds the manifest's I/O from the model's own metadata plus the operator's spec. */
export function describeIo(
  inputs: IoDescription[],
  outputs: IoDescription[],
  spec: SealSpec,
): Pick<ManifestBody, "inputs" | "outputs" | "maxBatch" | "runBatch"> {
  for (const i of inputs) if (i.type === "bfloat16") throw refuseBfloat16("input", i.name);
  for (const o of outputs) if (o.type === "bfloat16") throw refuseBfloat16("output", o.name);
  const ins = inputs.map((i) => {
    const o = spec.inputs[i.name] ?? {};
    const t = toSpec(i, o.batchAxis === undefined ? spec.batchAxis : o.batchAxis, {
      ...(o.range ? { range: o.range } : {}),
      ...(o.maxDim ? { maxDim: o.maxDim } : {}),
    });
    return { ...t, ...wireDtype(i, o.dtype) };
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
  if (!batched) return { inputs: ins, outputs: outs, maxBatch: 1 };
  return { inputs: ins, outputs: outs, maxBatch: spec.maxBatch, ...(spec.runBatch ? { runBatch: spec.runBatch } : {}) };
}

/** Reads I/O metadata with onnxruntime, from memory (the plaintext never touches disk). */
export async function inspectWithOrt(
  model: Uint8Array,
): Promise<{ inputs: IoDescription[]; outputs: IoDescription[] }> {
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(model, { executionProviders: ["cpu"] });
  } catch (err) {
    // onnxruntime says only "Unsupported data type: 16" of a bfloat16 input or output.
    throw bfloat16Refusal(model) ?? err;
  }
  const pick = (m: readonly ort.InferenceSession.ValueMetadata[]) =>
    m.map((v) => ({ name: v.name, type: v.isTensor ? v.type : "non-tensor", shape: v.isTensor ? [...v.shape] : [] }));
  const r = { inputs: pick(session.inputMetadata), outputs: pick(session.outputMetadata) };
  await session.release();
  return r;
}

/** The refusal for the model's first bfloat16 input or output, if it has one (read from the protobuf). */
function bfloat16Refusal(model: Uint8Array): CitadelError | undefined {
  let info: ReturnType<typeof inspectModel>;
  try {
    info = inspectModel(model);
  } catch {
    return undefined; // not readable without onnxruntime either: its own error says more
  }
  const input = info.inputs.find((i) => i.dtype === "bfloat16");
  if (input) return refuseBfloat16("input", input.name);
  const output = info.outputs.find((o) => o.dtype === "bfloat16");
  return output ? refuseBfloat16("output", output.name) : undefined;
}
