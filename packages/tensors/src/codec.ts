import { CitadelError, DTYPE_BYTES, type DType, type EncodedTensor, LIMITS } from "@citadel/contracts";
import { toBfloat16Bits, toFloat16Bits } from "./half.js";

export type TypedArray =
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | BigInt64Array;

/** A tensor in memory: a typed array over little-endian bytes, row-major (float16 and bfloat16: raw bits in a Uint16Array). */
export interface Tensor {
  dtype: DType;
  shape: number[];
  data: TypedArray;
}

type Ctor = {
  new (length: number): TypedArray;
  new (buf: ArrayBufferLike, off: number, len: number): TypedArray;
  readonly name: string;
};

/** Which array holds each dtype: bool in a Uint8Array (0/1), the half formats' bit patterns in a Uint16Array. */
export const TYPED_ARRAY_OF: Readonly<Record<DType, Ctor>> = {
  float32: Float32Array,
  float64: Float64Array,
  float16: Uint16Array,
  bfloat16: Uint16Array,
  int8: Int8Array,
  uint8: Uint8Array,
  int16: Int16Array,
  uint16: Uint16Array,
  int32: Int32Array,
  int64: BigInt64Array,
  bool: Uint8Array,
};

export function allocate(dtype: DType, length: number): TypedArray {
  return new TYPED_ARRAY_OF[dtype](length);
}

/**
 * Element count of a shape, refusing products over the hard limit before anything
 * is allocated (a shape like [2^20, 2^20] must not become a multiply overflow).
 */
export function elementCount(shape: readonly number[], name = "tensor"): number {
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (n > LIMITS.maxElementsPerTensor) {
      throw new CitadelError(
        "TENSOR_SHAPE_MISMATCH",
        `${name}: shape [${shape.join(",")}] has more than ${LIMITS.maxElementsPerTensor} elements`,
        {
          input: name,
        },
      );
    }
  }
  return n;
}

/** Decoded byte length of a well-formed base64 string, without decoding it. */
export function base64ByteLength(s: string): number {
  const pad = s.endsWith("==") ? 2 : s.endsWith("=") ? 1 : 0;
  return (s.length / 4) * 3 - pad;
}

/** A view of `bytes` as `dtype`, copied only when the offset is misaligned. */
export function viewAs(dtype: DType, bytes: Uint8Array): TypedArray {
  const size = DTYPE_BYTES[dtype];
  if (bytes.byteOffset % size === 0)
    return new TYPED_ARRAY_OF[dtype](bytes.buffer, bytes.byteOffset, bytes.byteLength / size);
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return new TYPED_ARRAY_OF[dtype](copy.buffer, 0, bytes.byteLength / size);
}

export function bytesOf(data: TypedArray): Buffer {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * Decodes base64 tensor data. The length is checked against the shape before the
 * string is decoded, so a lying shape costs nothing.
 */
export function decodeBase64Data(name: string, dtype: DType, shape: readonly number[], data: string): TypedArray {
  const count = elementCount(shape, name);
  const expected = count * DTYPE_BYTES[dtype];
  if (data.length % 4 !== 0) throw invalidBase64(name);
  const got = base64ByteLength(data);
  if (got !== expected) {
    throw new CitadelError(
      "TENSOR_DATA_LENGTH_MISMATCH",
      `${name}: shape [${shape.join(",")}] of ${dtype} needs ${expected} bytes, data has ${got}`,
      { input: name, expectedBytes: expected, gotBytes: got },
    );
  }
  const bytes = Buffer.from(data, "base64");
  // Node's decoder skips characters outside the alphabet; a canonical string re-encodes
  // to itself. Both passes run in native code (a JS regex over 150 KB costs more).
  if (bytes.length !== expected || bytes.toString("base64") !== data) throw invalidBase64(name);
  return viewAs(dtype, bytes);
}

function invalidBase64(name: string): CitadelError {
  return new CitadelError(
    "TENSOR_ENCODING_INVALID",
    `${name}: data is not well-formed base64 (standard alphabet, padded)`,
    {
      input: name,
    },
  );
}

const INT_RANGES: Partial<Record<DType, [number, number]>> = {
  int8: [-128, 127],
  uint8: [0, 255],
  int16: [-32768, 32767],
  uint16: [0, 65535],
  int32: [-2147483648, 2147483647],
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  bool: [0, 1],
};

/** JSON numbers to 16-bit float patterns, rounded to nearest even; out of range becomes ±Inf (refused by validation). */
const NARROW: Partial<Record<DType, (x: number) => number>> = { float16: toFloat16Bits, bfloat16: toBfloat16Bits };

/** Decodes a flat JSON array; each integer element must fit the dtype exactly, floats are rounded to it. */
export function decodeArrayData(
  name: string,
  dtype: DType,
  shape: readonly number[],
  data: readonly (number | boolean)[],
): TypedArray {
  const count = elementCount(shape, name);
  if (data.length !== count) {
    throw new CitadelError(
      "TENSOR_DATA_LENGTH_MISMATCH",
      `${name}: shape [${shape.join(",")}] needs ${count} values, data has ${data.length}`,
      {
        input: name,
        expected: count,
        got: data.length,
      },
    );
  }
  const out = allocate(dtype, count);
  const range = INT_RANGES[dtype];
  const narrow = NARROW[dtype];
  for (let i = 0; i < count; i++) {
    const raw = data[i];
    const v = typeof raw === "boolean" ? (dtype === "bool" ? Number(raw) : Number.NaN) : raw;
    if (typeof v !== "number") {
      throw new CitadelError("TENSOR_ENCODING_INVALID", `${name}: element ${i} is not a number`, {
        input: name,
        index: i,
      });
    }
    if (range) {
      if (!Number.isInteger(v) || v < range[0] || v > range[1]) {
        throw new CitadelError("TENSOR_ENCODING_INVALID", `${name}: element ${i} is not a valid ${dtype}`, {
          input: name,
          index: i,
        });
      }
      if (out instanceof BigInt64Array) out[i] = BigInt(v);
      else out[i] = v;
    } else if (narrow) {
      (out as Uint16Array)[i] = narrow(v);
    } else {
      (out as Float32Array | Float64Array)[i] = v;
    }
  }
  return out;
}

export function encodeTensor(t: Tensor): EncodedTensor {
  return { dtype: t.dtype, shape: [...t.shape], data: bytesOf(t.data).toString("base64") };
}

/**
 * Raw little-endian bytes as `dtype` (a binary request body, a job's stored inputs),
 * checked against the shape's byte length first; a view, not a copy, when aligned.
 */
export function decodeRawData(name: string, dtype: DType, shape: readonly number[], bytes: Uint8Array): TypedArray {
  const expected = elementCount(shape, name) * DTYPE_BYTES[dtype];
  if (bytes.byteLength !== expected) {
    throw new CitadelError(
      "TENSOR_DATA_LENGTH_MISMATCH",
      `${name}: shape [${shape.join(",")}] of ${dtype} needs ${expected} bytes, data has ${bytes.byteLength}`,
      { input: name, expectedBytes: expected, gotBytes: bytes.byteLength },
    );
  }
  return viewAs(dtype, bytes);
}

/** Decodes a tensor that was validated earlier (queue payloads are re-checked by the caller). */
export function decodeEncoded(name: string, t: EncodedTensor): Tensor {
  return { dtype: t.dtype, shape: [...t.shape], data: decodeBase64Data(name, t.dtype, t.shape, t.data) };
}
