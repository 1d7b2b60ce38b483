import {
  type BinaryViewHeader,
  type EncodedTensor,
  INFERENCE_HEADER_LENGTH,
  type JobView,
  type TensorPayload,
} from "@citadel/contracts";
import {
  binaryDescriptor,
  decodeRawData,
  frameBinaryBody,
  type NamedRawTensor,
  sliceBinaryTensors,
  splitBinaryBody,
} from "@citadel/tensors";
import { fromEncoded, isTensor, type Tensor, tensorBytes, toPayload } from "./tensor.js";
import type { Job, JobInput, JobResult } from "./types.js";

/**
 * Jobs to and from the wire: JSON bodies (tensors as base64), KServe v2 binary bodies
 * (framed by @citadel/tensors, the server's own codec), and views back with their
 * outputs as TypedArrays.
 */

/** Whether a job can go as a binary body: every input is a TypedArray tensor. */
export function binaryable(job: JobInput): boolean {
  return Object.values(job.inputs).every(isTensor);
}

/** The JSON body of a job: as given, tensors as base64. */
export function jsonJob(job: JobInput): Record<string, unknown> {
  const inputs: Record<string, TensorPayload> = {};
  for (const [name, t] of Object.entries(job.inputs)) inputs[name] = isTensor(t) ? toPayload(t) : t;
  return { ...job, inputs };
}

/** A binary body of one job (bulk: false) or many: the JSON header, then every input's bytes in order. */
export function binaryJobs(
  jobs: readonly JobInput[],
  bulk: boolean,
): { body: Uint8Array; headers: Record<string, string> } {
  const tensors: NamedRawTensor[] = [];
  const headers = jobs.map((job) => {
    const { inputs, outputs, ...rest } = job;
    const raw = Object.entries(inputs).map(([name, t]) => {
      const tensor = t as Tensor;
      return { name, dtype: tensor.dtype, shape: [...tensor.shape], bytes: tensorBytes(tensor) };
    });
    tensors.push(...raw);
    return {
      ...rest,
      inputs: raw.map(binaryDescriptor),
      ...(outputs ? { outputs: outputs.map((name) => ({ name })) } : {}),
    };
  });
  const { body, headerLength } = frameBinaryBody(bulk ? { jobs: headers } : headers[0], tensors);
  return {
    body,
    headers: { "content-type": "application/octet-stream", [INFERENCE_HEADER_LENGTH]: String(headerLength) },
  };
}

function decodeOutputs(outputs: Record<string, EncodedTensor>): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [name, e] of Object.entries(outputs)) out[name] = fromEncoded(name, e);
  return out;
}

/** A JSON result with its outputs decoded (undefined stays undefined). */
export function decodeResult(result: JobView["result"]): JobResult | undefined {
  return result ? { ...result, outputs: decodeOutputs(result.outputs) } : undefined;
}

/** A JSON job view, its outputs decoded. */
export function fromView(view: JobView): Job {
  // Spread in place: the result keeps its position among the view's fields.
  return view.result ? { ...view, result: decodeResult(view.result) } : (view as Job);
}

/** A binary answer (a completed job's view as bytes): the header's view, the outputs cut from the bytes after it. */
export function fromBinaryView(headerLength: string | null, body: Uint8Array): Job {
  const { header, data } = splitBinaryBody(headerLength ?? undefined, body);
  const view = JSON.parse(new TextDecoder().decode(header)) as BinaryViewHeader;
  if (!view.result) return view as Job;
  const outputs: Record<string, Tensor> = {};
  for (const t of sliceBinaryTensors(view.result.outputs, data)) {
    outputs[t.name] = { dtype: t.dtype, shape: t.shape, data: decodeRawData(t.name, t.dtype, t.shape, t.bytes) };
  }
  return { ...view, result: { ...view.result, outputs } };
}

/** A job back in the API's JSON form (outputs as base64), as GET /v1/jobs/{id} answers it. */
export function toView(job: Job): JobView {
  if (!job.result) return job as JobView;
  const outputs: Record<string, EncodedTensor> = {};
  for (const [name, t] of Object.entries(job.result.outputs)) outputs[name] = toPayload(t) as EncodedTensor;
  return { ...job, result: { ...job.result, outputs } };
}
