import {
  CitadelError,
  type EncodedTensor,
  type OutputPolicy,
  type TensorSpec,
  type V2InferRequest,
  type V2InferResponse,
  type V2MetadataTensor,
  type V2ModelMetadata,
  type V2RequestInput,
  type V2ResponseOutput,
} from "@citadel/contracts";
import { bytesOf, decodeEncoded, type Tensor } from "./codec.js";
import { fromBfloat16Bits, fromFloat16Bits } from "./half.js";
import { binaryDescriptor, DTYPE_TO_KSERVE, encodeBinaryBody, KSERVE_TO_DTYPE, sliceBinaryTensors } from "./kserve.js";
import type { ModelIo, TensorInput } from "./validate.js";

/**
 * The Open Inference Protocol (KServe v2) mapped onto Citadel's tensors, HTTP aside:
 * request inputs to what validation takes, manifests to model metadata, a job's result
 * to the protocol's answer. Datatypes go through the one table in kserve.ts.
 */

/** What `platform` says of every model: an ONNX file run by onnxruntime (a TensorRT engine travels inside one). */
export const V2_PLATFORM = "onnxruntime_onnx";

function tensorMetadata(s: TensorSpec): V2MetadataTensor {
  return { name: s.name, datatype: DTYPE_TO_KSERVE[s.dtype], shape: s.shape.map((d) => d ?? -1) };
}

/**
 * A model's metadata from its verified manifest: dynamic dimensions (the batch axis among
 * them) are -1. With `policy` (the manifest's merged with the tenant's), the outputs are
 * described as that tenant receives them (applyOutputPolicy in policy.ts): allowed ones
 * only, a label (INT32, the last axis gone) under labelOnly, at most topK values along
 * the last axis and their `<name>.indices` under topK.
 */
export function v2ModelMetadata(
  name: string,
  versions: readonly string[],
  io: Pick<ModelIo, "inputs" | "outputs">,
  policy: OutputPolicy = {},
): V2ModelMetadata {
  return {
    name,
    versions: [...versions],
    platform: V2_PLATFORM,
    inputs: io.inputs.map(tensorMetadata),
    outputs: io.outputs.flatMap((o) => outputMetadata(tensorMetadata(o), policy)),
  };
}

function outputMetadata(t: V2MetadataTensor, policy: OutputPolicy): V2MetadataTensor[] {
  if (policy.allowedOutputs && !policy.allowedOutputs.includes(t.name)) return [];
  const last = t.shape.at(-1);
  if (last === undefined) return [t];
  const lead = t.shape.slice(0, -1);
  if (policy.labelOnly) return [{ name: t.name, datatype: "INT32", shape: lead }];
  if (policy.topK === undefined) return [t];
  const shape = [...lead, last < 0 ? -1 : Math.min(policy.topK, last)];
  return [
    { ...t, shape },
    { name: `${t.name}.indices`, datatype: "INT32", shape },
  ];
}

/**
 * An infer request's inputs as validation takes them. `binary` is the bytes after a
 * binary body's header (undefined for a JSON body): inputs with `binary_data_size` are
 * cut from it in order (the same slicer as /v1's binary bodies), the others carry
 * `data` in the JSON. Each input has exactly one of the two.
 */
export function v2Inputs(req: V2InferRequest, binary: Uint8Array | undefined): Record<string, TensorInput> {
  const names = new Set<string>();
  for (const input of req.inputs) checkForm(input, names, binary !== undefined);
  const sized = req.inputs.flatMap((i) => {
    const size = i.parameters?.binary_data_size;
    return size === undefined ? [] : [{ ...i, parameters: { binary_data_size: size } }];
  });
  const raw = binary ? sliceBinaryTensors(sized, binary) : [];
  const out = new Map<string, TensorInput>();
  let k = 0;
  for (const input of req.inputs) {
    const t = input.parameters?.binary_data_size !== undefined ? raw[k++] : undefined;
    if (t) out.set(input.name, { dtype: t.dtype, shape: t.shape, bytes: t.bytes });
    else if (input.data) {
      out.set(input.name, {
        dtype: KSERVE_TO_DTYPE[input.datatype],
        shape: [...input.shape],
        data: flatten(input.name, input.shape, input.data),
      });
    }
  }
  // fromEntries defines own properties: an input named "__proto__" stays a name (refused as unknown).
  return Object.fromEntries(out);
}

/** An input is named once and has exactly one of data and binary_data_size (the latter only in a binary body). */
function checkForm(input: V2RequestInput, names: Set<string>, binary: boolean): void {
  const name = input.name;
  if (names.has(name)) throw new CitadelError("VALIDATION_FAILED", `input '${name}' is listed twice`, { input: name });
  names.add(name);
  const sized = input.parameters?.binary_data_size !== undefined;
  if (sized && input.data !== undefined) {
    throw new CitadelError("VALIDATION_FAILED", `input '${name}' has both data and parameters.binary_data_size`, {
      input: name,
    });
  }
  if (sized && !binary) {
    throw new CitadelError(
      "VALIDATION_FAILED",
      `input '${name}' has parameters.binary_data_size, but the body is JSON: send binary data as ` +
        "application/octet-stream with an Inference-Header-Content-Length header",
      { input: name },
    );
  }
  if (!sized && input.data === undefined) {
    throw new CitadelError(
      binary ? "BINARY_DATA_SIZE_MISSING" : "VALIDATION_FAILED",
      `input '${name}' has neither data nor parameters.binary_data_size`,
      { input: name },
    );
  }
}

/**
 * Tensor data as the flat row-major list validation takes. The protocol allows data
 * flat or nested; nested data must mirror the shape at every level (a ragged or
 * mis-shaped nesting is not guessed at). Leaves must be numbers or booleans; whether
 * each fits the datatype is checked by validation.
 */
function flatten(name: string, shape: readonly number[], data: readonly unknown[]): (number | boolean)[] {
  const out: (number | boolean)[] = [];
  const leaf = (v: unknown) => {
    if (typeof v !== "number" && typeof v !== "boolean") {
      throw new CitadelError("TENSOR_ENCODING_INVALID", `${name}: element ${out.length} is not a number`, {
        input: name,
        index: out.length,
      });
    }
    out.push(v);
  };
  if (!data.some(Array.isArray)) {
    for (const v of data) leaf(v);
    return out;
  }
  const walk = (a: unknown, depth: number): void => {
    if (depth === shape.length) {
      leaf(a);
      return;
    }
    if (!Array.isArray(a) || a.length !== shape[depth]) {
      throw new CitadelError(
        "TENSOR_SHAPE_MISMATCH",
        `${name}: nested data does not match shape [${shape.join(",")}] at depth ${depth}`,
        { input: name, depth },
      );
    }
    for (const x of a) walk(x, depth + 1);
  };
  walk(data, 0);
  return out;
}

/** The output names a request asks for (undefined: every output the policy allows). */
export function v2OutputNames(req: V2InferRequest): string[] | undefined {
  return req.outputs?.length ? req.outputs.map((o) => o.name) : undefined;
}

/** An answer: JSON, or (some output as bytes) a binary body whose header is the JSON answer. */
export type V2Answer = { json: V2InferResponse } | { body: Buffer; headerLength: number };

/**
 * A completed job's outputs as the protocol's answer. An output goes as bytes when its
 * own `binary_data` says so, else when the request's `binary_data_output` does; values
 * JSON numbers cannot carry exactly (NaN, ±Inf, int64 beyond ±2^53) go as bytes whatever
 * was asked, rather than altered. Outputs the output policy adds (`<name>.indices`)
 * follow the choice for `<name>`.
 */
export function v2Answer(
  req: Pick<V2InferRequest, "parameters" | "outputs">,
  outputs: Readonly<Record<string, EncodedTensor>>,
  meta: { modelName: string; modelVersion: string; id: string; jobId: string },
): V2Answer {
  const asked = new Map(req.outputs?.map((o) => [o.name, o.parameters?.binary_data]));
  const binaryByDefault = req.parameters?.binary_data_output === true;
  const described: V2ResponseOutput[] = [];
  const bytes: { bytes: Uint8Array }[] = [];
  for (const [name, encoded] of Object.entries(outputs)) {
    const t = decodeEncoded(name, encoded);
    const own = asked.get(name) ?? asked.get(name.replace(/\.indices$/, ""));
    const values = (own ?? binaryByDefault) ? undefined : jsonValues(t);
    if (values) {
      described.push({ name, datatype: DTYPE_TO_KSERVE[t.dtype], shape: [...t.shape], data: values });
    } else {
      const raw = { name, dtype: t.dtype, shape: [...t.shape], bytes: bytesOf(t.data) };
      described.push(binaryDescriptor(raw));
      bytes.push(raw);
    }
  }
  const json: V2InferResponse = {
    model_name: meta.modelName,
    model_version: meta.modelVersion,
    id: meta.id,
    parameters: { job_id: meta.jobId },
    outputs: described,
  };
  return bytes.length === 0 ? { json } : encodeBinaryBody(json, bytes);
}

/** A tensor's values as JSON (BOOL as booleans), or undefined when JSON cannot carry one of them exactly. */
function jsonValues(t: Tensor): (number | boolean)[] | undefined {
  const d = t.data;
  if (d instanceof BigInt64Array) {
    const out: number[] = [];
    for (const v of d) {
      if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) return undefined;
      out.push(Number(v));
    }
    return out;
  }
  if (t.dtype === "bool") return Array.from(d as Uint8Array, (v) => v !== 0);
  // float16/bfloat16 data are bit patterns: the answer carries their values (exact as JSON numbers).
  const half = t.dtype === "float16" ? fromFloat16Bits : t.dtype === "bfloat16" ? fromBfloat16Bits : undefined;
  const out = half ? Array.from(d as Uint16Array, half) : Array.from(d as Exclude<typeof d, BigInt64Array>);
  return out.every(Number.isFinite) ? out : undefined;
}
