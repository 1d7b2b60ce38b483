import { DTYPE_BYTES, type DType, type EncodedTensor, type TensorPayload } from "@citadel/contracts";
import {
  decodeRawData,
  fromBfloat16Bits,
  fromFloat16Bits,
  type Tensor,
  TYPED_ARRAY_OF,
  type TypedArray,
  toBfloat16Bits,
  toFloat16Bits,
} from "@citadel/tensors";
import { fromBase64, toBase64 } from "./base64.js";

/**
 * Tensors as TypedArrays: built from one (`tensor`), sent as their raw bytes (binary
 * bodies) or base64 of them (JSON), and read back from either. float16 and bfloat16
 * travel as their raw 16-bit patterns in a Uint16Array; toHalf/fromHalf convert.
 */

export type { Tensor, TypedArray } from "@citadel/tensors";

/** The 16-bit float formats, held as bit patterns. */
export type HalfDType = "float16" | "bfloat16";

type ArrayType = (typeof TYPED_ARRAY_OF)[DType];

/** The dtype each array stands for when none is given. */
const DTYPE_OF: readonly [ArrayType, DType][] = [
  [Float32Array, "float32"],
  [Float64Array, "float64"],
  [Int8Array, "int8"],
  [Uint8Array, "uint8"],
  [Int16Array, "int16"],
  [Uint16Array, "uint16"],
  [Int32Array, "int32"],
  [BigInt64Array, "int64"],
];

/** Whether this machine stores numbers little-endian, as the wire formats carry them. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * A tensor over `data` (not copied), row-major. The dtype follows the array
 * (Float32Array is float32, BigInt64Array int64, …) unless given: `bool` takes a
 * Uint8Array of 0/1, `float16`/`bfloat16` a Uint16Array of bit patterns (toHalf).
 */
export function tensor(data: TypedArray, shape: readonly number[], dtype?: DType): Tensor {
  const implied = DTYPE_OF.find(([array]) => data instanceof array)?.[1];
  if (!implied)
    throw new TypeError("tensor data must be a Float32/Float64/Int8/Uint8/Int16/Uint16/Int32/BigInt64 array");
  const dt = dtype ?? implied;
  const want = TYPED_ARRAY_OF[dt];
  if (!(data instanceof want))
    throw new TypeError(`a ${dt} tensor takes a ${want.name}, not a ${TYPED_ARRAY_OF[implied].name}`);
  let count = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new RangeError(`shape [${shape.join(",")}]: dimensions are whole numbers`);
    count *= d;
  }
  if (count !== data.length) {
    throw new RangeError(`shape [${shape.join(",")}] holds ${count} elements, the data has ${data.length}`);
  }
  return { dtype: dt, shape: [...shape], data };
}

/** Numbers as float16 or bfloat16 bit patterns, each rounded to the nearest (ties to even). */
export function toHalf(values: ArrayLike<number>, dtype: HalfDType): Uint16Array {
  const narrow = dtype === "float16" ? toFloat16Bits : toBfloat16Bits;
  return Uint16Array.from({ length: values.length }, (_, i) => narrow(values[i] as number));
}

/** float16 or bfloat16 bit patterns as their exact values (every one is a float32). */
export function fromHalf(bits: Uint16Array, dtype: HalfDType): Float32Array {
  const widen = dtype === "float16" ? fromFloat16Bits : fromBfloat16Bits;
  return Float32Array.from(bits, (b) => widen(b));
}

export function isTensor(x: Tensor | TensorPayload): x is Tensor {
  return ArrayBuffer.isView(x.data) && !(x.data instanceof DataView);
}

/** A tensor's bytes as the wire carries them (little-endian, row-major): a view, not a copy. */
export function tensorBytes(t: Tensor): Uint8Array {
  if (!LITTLE_ENDIAN && DTYPE_BYTES[t.dtype] > 1) {
    throw new RangeError("this machine is big-endian; Citadel's tensors are little-endian");
  }
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/** The JSON form of a tensor: base64 of its bytes. */
export function toPayload(t: Tensor): TensorPayload {
  return { dtype: t.dtype, shape: [...t.shape], data: toBase64(tensorBytes(t)) };
}

/** A result's tensor from its JSON form, its size checked against dtype × shape. */
export function fromEncoded(name: string, e: EncodedTensor): Tensor {
  return { dtype: e.dtype, shape: [...e.shape], data: decodeRawData(name, e.dtype, e.shape, fromBase64(e.data)) };
}
