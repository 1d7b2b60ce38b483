/** Bytes that are not a usable ONNX model: not a ModelProto, no graph, or I/O this package cannot describe. */
export class OnnxModelError extends Error {
  override readonly name = "OnnxModelError";

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}
