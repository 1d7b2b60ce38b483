import { type Tensor, widenBfloat16 } from "@citadel/tensors";
import * as ort from "onnxruntime-node";

/**
 * A feed for onnxruntime from a tensor's bytes (a view, no copy, except where widened;
 * the view may start anywhere in its buffer: a part of a batch cut in the runner).
 *
 * - bfloat16: onnxruntime-node has no bfloat16 tensors; a bfloat16 input is fed to the
 *   model's float32 input (the manifest's `modelDtype`, checked at load), widened
 *   exactly: each pattern is the top half of its float32.
 * - float16: the raw bits go in as a Uint16Array. Where the runtime has Float16Array
 *   (Node 24), onnxruntime-common rewraps them as one, and onnxruntime-node 1.30's
 *   binding reads a Float16Array as 0 bytes ("not enough space"); the tensor's `data`
 *   is pinned back to the Uint16Array over the same bytes, which the binding reads.
 */
export function toOrtTensor(t: Tensor): ort.Tensor {
  const d = t.data;
  if (t.dtype === "bfloat16")
    return new ort.Tensor("float32", widenBfloat16(new Uint16Array(d.buffer, d.byteOffset, d.byteLength / 2)), t.shape);
  if (t.dtype === "float16") {
    const bits = new Uint16Array(d.buffer, d.byteOffset, d.byteLength / 2);
    const tensor = new ort.Tensor("float16", bits, t.shape);
    if (!(tensor.data instanceof Uint16Array)) Object.defineProperty(tensor, "data", { value: bits });
    return tensor;
  }
  return new ort.Tensor(t.dtype, d as ort.Tensor.DataType, t.shape);
}
