import { type BinaryInputHeader, CitadelError, type DType, type KServeDatatype } from "@citadel/contracts";
import type { RawTensor } from "./validate.js";

/**
 * The Open Inference Protocol (KServe v2) binary tensor data extension, as a pure codec:
 * a body is `Inference-Header-Content-Length` bytes of JSON header, then each tensor's
 * raw little-endian bytes (row-major, no padding) in the order the header lists them,
 * each `parameters.binary_data_size` long. Decoding hands out views over the body,
 * never copies.
 */

export const KSERVE_TO_DTYPE: Readonly<Record<KServeDatatype, DType>> = {
  BOOL: "bool",
  UINT8: "uint8",
  INT8: "int8",
  UINT16: "uint16",
  INT16: "int16",
  INT32: "int32",
  INT64: "int64",
  FP16: "float16",
  BF16: "bfloat16",
  FP32: "float32",
  FP64: "float64",
};

export const DTYPE_TO_KSERVE: Readonly<Record<DType, KServeDatatype>> = {
  bool: "BOOL",
  uint8: "UINT8",
  int8: "INT8",
  uint16: "UINT16",
  int16: "INT16",
  int32: "INT32",
  int64: "INT64",
  float32: "FP32",
  float64: "FP64",
  float16: "FP16",
  bfloat16: "BF16",
};

/** A tensor with its name, as a binary body carries it. */
export interface NamedRawTensor extends RawTensor {
  name: string;
}

/** A binary body cut at its header: the header's bytes and the tensor bytes after it (both views of the body). */
export interface BinaryBody {
  header: Uint8Array;
  data: Uint8Array;
}

/**
 * Splits a body at the length its `Inference-Header-Content-Length` gives. The value
 * must be a plain decimal integer (no sign, no exponent, no spaces) within the body.
 */
export function splitBinaryBody(headerLength: string | readonly string[] | undefined, body: Uint8Array): BinaryBody {
  if (headerLength === undefined) {
    throw new CitadelError(
      "BINARY_HEADER_LENGTH_INVALID",
      "a binary body needs an Inference-Header-Content-Length header (the byte length of its JSON header)",
    );
  }
  const raw = typeof headerLength === "string" ? headerLength : undefined;
  if (raw === undefined || !/^[0-9]{1,15}$/.test(raw)) {
    throw new CitadelError(
      "BINARY_HEADER_LENGTH_INVALID",
      "Inference-Header-Content-Length must be one non-negative decimal integer",
    );
  }
  const n = Number(raw);
  if (n > body.byteLength) {
    throw new CitadelError(
      "BINARY_HEADER_LENGTH_INVALID",
      `Inference-Header-Content-Length is ${n} but the body has only ${body.byteLength} bytes`,
      { headerLength: n, bodyBytes: body.byteLength },
    );
  }
  return { header: body.subarray(0, n), data: body.subarray(n) };
}

/**
 * Cuts `data` into one view per tensor header, `binary_data_size` bytes each, in order.
 * The sizes must use every byte: too few bytes or bytes left over are refused (a body
 * that does not add up is not guessed at). Sizes against dtype × shape are checked by
 * validation, which knows the manifest.
 */
export function sliceBinaryTensors(
  tensors: readonly Pick<BinaryInputHeader, "name" | "datatype" | "shape" | "parameters">[],
  data: Uint8Array,
): NamedRawTensor[] {
  const out: NamedRawTensor[] = [];
  let offset = 0;
  for (const t of tensors) {
    const size = t.parameters.binary_data_size;
    if (offset + size > data.byteLength) {
      throw new CitadelError(
        "BINARY_DATA_SIZE_MISMATCH",
        `'${t.name}' declares ${size} bytes at offset ${offset}, but only ${data.byteLength - offset} remain after the header`,
        { input: t.name, offset, binaryDataSize: size, remaining: data.byteLength - offset },
      );
    }
    out.push({
      name: t.name,
      dtype: KSERVE_TO_DTYPE[t.datatype],
      shape: [...t.shape],
      bytes: data.subarray(offset, offset + size),
    });
    offset += size;
  }
  if (offset !== data.byteLength) {
    throw new CitadelError(
      "BINARY_DATA_SIZE_MISMATCH",
      `the binary_data_size values add up to ${offset} bytes, but ${data.byteLength} follow the header`,
      { declared: offset, got: data.byteLength },
    );
  }
  return out;
}

/** The KServe descriptor of a tensor sent as binary data. */
export function binaryDescriptor(t: NamedRawTensor): BinaryInputHeader {
  return {
    name: t.name,
    datatype: DTYPE_TO_KSERVE[t.dtype],
    shape: [...t.shape],
    parameters: { binary_data_size: t.bytes.byteLength },
  };
}

/**
 * A binary body: `header` serialised as UTF-8 JSON, then each tensor's bytes in the
 * order given. The caller puts the tensors' descriptors (binaryDescriptor) into the
 * header where its format wants them; `headerLength` is the value of
 * Inference-Header-Content-Length. Web APIs only (TextEncoder, Uint8Array), so clients
 * in browsers frame bodies with the same code as the server.
 */
export function frameBinaryBody(
  header: unknown,
  tensors: readonly Pick<RawTensor, "bytes">[],
): { body: Uint8Array; headerLength: number } {
  const head = new TextEncoder().encode(JSON.stringify(header));
  let size = head.byteLength;
  for (const t of tensors) size += t.bytes.byteLength;
  const body = new Uint8Array(size);
  body.set(head, 0);
  let offset = head.byteLength;
  for (const t of tensors) {
    body.set(t.bytes, offset);
    offset += t.bytes.byteLength;
  }
  return { body, headerLength: head.byteLength };
}

/** frameBinaryBody as a Buffer (what Fastify replies send), without copying. */
export function encodeBinaryBody(
  header: unknown,
  tensors: readonly Pick<RawTensor, "bytes">[],
): { body: Buffer; headerLength: number } {
  const { body, headerLength } = frameBinaryBody(header, tensors);
  return { body: Buffer.from(body.buffer, body.byteOffset, body.byteLength), headerLength };
}
