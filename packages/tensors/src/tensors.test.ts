import { CitadelError, type TensorSpec, thrownCode } from "@citadel/contracts";
import { describe, expect, it } from "vitest";
import { concat, split } from "./batch.js";
import { encodeTensor, type Tensor } from "./codec.js";
import { applyOutputPolicy, mergePolicies } from "./policy.js";
import { resolveOutputs, validateInputs } from "./validate.js";

const x: TensorSpec = { name: "x", dtype: "float32", shape: [null, 3], batchAxis: 0, range: [-10, 10] };
const io = {
  inputs: [x],
  outputs: [{ name: "y", dtype: "float32" as const, shape: [null, 2], batchAxis: 0 }],
  maxBatch: 4,
};

function b64(values: number[]): string {
  return Buffer.from(new Float32Array(values).buffer).toString("base64");
}
const code = thrownCode;

describe("validateInputs", () => {
  it("accepts base64 and JSON arrays and reports batch and bytes", () => {
    const a = validateInputs({ x: { dtype: "float32", shape: [2, 3], data: b64([1, 2, 3, 4, 5, 6]) } }, io);
    expect(a.batch).toBe(2);
    expect(a.inputBytes).toBe(24);
    expect(Array.from(a.tensors.x?.data as Float32Array)).toEqual([1, 2, 3, 4, 5, 6]);
    const j = validateInputs({ x: { dtype: "float32", shape: [1, 3], data: [1, 2, 3] } }, io);
    expect(j.batch).toBe(1);
  });

  it("accepts raw bytes as a view (no copy when aligned) and checks their length and values", () => {
    const bytes = new Uint8Array(new Float32Array([1, 2, 3, 4, 5, 6]).buffer);
    const r = validateInputs({ x: { dtype: "float32", shape: [2, 3], bytes } }, io);
    expect(r.batch).toBe(2);
    expect(r.tensors.x?.data.buffer).toBe(bytes.buffer);
    expect(Array.from(r.tensors.x?.data as Float32Array)).toEqual([1, 2, 3, 4, 5, 6]);
    const short = bytes.subarray(0, 20);
    expect(code(() => validateInputs({ x: { dtype: "float32", shape: [2, 3], bytes: short } }, io))).toBe(
      "TENSOR_DATA_LENGTH_MISMATCH",
    );
    const nan = new Uint8Array(new Float32Array([1, Number.NaN, 3]).buffer);
    expect(code(() => validateInputs({ x: { dtype: "float32", shape: [1, 3], bytes: nan } }, io))).toBe(
      "TENSOR_NON_FINITE",
    );
  });

  it.each([
    ["unknown input", { y: { dtype: "float32", shape: [1, 3], data: [1, 2, 3] } }, "INPUT_UNKNOWN"],
    ["missing input", {}, "INPUT_MISSING"],
    ["dtype", { x: { dtype: "int32", shape: [1, 3], data: [1, 2, 3] } }, "TENSOR_DTYPE_MISMATCH"],
    ["rank", { x: { dtype: "float32", shape: [3], data: [1, 2, 3] } }, "TENSOR_RANK_MISMATCH"],
    ["fixed dim", { x: { dtype: "float32", shape: [1, 4], data: [1, 2, 3, 4] } }, "TENSOR_SHAPE_MISMATCH"],
    ["batch zero", { x: { dtype: "float32", shape: [0, 3], data: [] } }, "TENSOR_SHAPE_MISMATCH"],
    ["batch bound", { x: { dtype: "float32", shape: [5, 3], data: new Array(15).fill(0) } }, "BATCH_TOO_LARGE"],
    [
      "lying length (array)",
      { x: { dtype: "float32", shape: [2, 3], data: [1, 2, 3] } },
      "TENSOR_DATA_LENGTH_MISMATCH",
    ],
    [
      "lying length (base64)",
      { x: { dtype: "float32", shape: [2, 3], data: b64([1, 2, 3]) } },
      "TENSOR_DATA_LENGTH_MISMATCH",
    ],
    ["bad base64", { x: { dtype: "float32", shape: [1, 3], data: "!!!!!!!!!!!!!!!!" } }, "TENSOR_ENCODING_INVALID"],
    [
      "base64 one byte short",
      { x: { dtype: "float32", shape: [1, 3], data: "AAAAAAAAAAAAAAA=" } },
      "TENSOR_DATA_LENGTH_MISMATCH",
    ],
    ["NaN", { x: { dtype: "float32", shape: [1, 3], data: b64([1, Number.NaN, 3]) } }, "TENSOR_NON_FINITE"],
    [
      "Inf",
      { x: { dtype: "float32", shape: [1, 3], data: b64([1, Number.POSITIVE_INFINITY, 3]) } },
      "TENSOR_NON_FINITE",
    ],
    ["range", { x: { dtype: "float32", shape: [1, 3], data: [1, 11, 3] } }, "TENSOR_OUT_OF_RANGE"],
  ])("refuses %s", (_label, inputs, expected) => {
    // Hostile inputs are deliberately ill-typed.
    expect(code(() => validateInputs(inputs as never, io))).toBe(expected);
  });

  it("refuses a shape whose product overflows before allocating", () => {
    const spec: TensorSpec = { name: "x", dtype: "float32", shape: [null, null, null], batchAxis: 0 };
    const huge = { x: { dtype: "float32" as const, shape: [1, 1 << 20, 1 << 20], data: "AAAA" } };
    expect(code(() => validateInputs(huge, { inputs: [spec], outputs: [], maxBatch: 8 }))).toBe(
      "TENSOR_SHAPE_MISMATCH",
    );
  });

  it("requires every batched input to agree on the batch", () => {
    const two = {
      inputs: [x, { ...x, name: "z" }],
      outputs: [],
      maxBatch: 4,
    };
    const inputs = {
      x: { dtype: "float32" as const, shape: [1, 3], data: [1, 2, 3] },
      z: { dtype: "float32" as const, shape: [2, 3], data: [1, 2, 3, 4, 5, 6] },
    };
    expect(code(() => validateInputs(inputs, two))).toBe("BATCH_MISMATCH");
  });

  it("checks requested outputs", () => {
    expect(resolveOutputs(undefined, io)).toEqual(["y"]);
    expect(code(() => resolveOutputs(["nope"], io))).toBe("OUTPUT_UNKNOWN");
  });
});

describe("concat/split", () => {
  const t = (shape: number[], values: number[]): Tensor => ({
    dtype: "float32",
    shape,
    data: new Float32Array(values),
  });

  it("round-trips along the first axis", () => {
    const a = t([1, 2], [1, 2]);
    const b = t([2, 2], [3, 4, 5, 6]);
    const c = concat([a, b], 0);
    expect(c.shape).toEqual([3, 2]);
    expect(Array.from(c.data as Float32Array)).toEqual([1, 2, 3, 4, 5, 6]);
    const [a2, b2] = split(c, 0, [1, 2]);
    expect(a2).toEqual(a);
    expect(b2).toEqual(b);
  });

  it("round-trips along an inner axis", () => {
    // [2, N, 2] with N=1 and N=2
    const a = t([2, 1, 2], [1, 2, 10, 20]);
    const b = t([2, 2, 2], [3, 4, 5, 6, 30, 40, 50, 60]);
    const c = concat([a, b], 1);
    expect(c.shape).toEqual([2, 3, 2]);
    expect(Array.from(c.data as Float32Array)).toEqual([1, 2, 3, 4, 5, 6, 10, 20, 30, 40, 50, 60]);
    const parts = split(c, 1, [1, 2]);
    expect(parts[0]).toEqual(a);
    expect(parts[1]).toEqual(b);
  });

  it("handles int64", () => {
    const a: Tensor = { dtype: "int64", shape: [1], data: new BigInt64Array([1n]) };
    const b: Tensor = { dtype: "int64", shape: [2], data: new BigInt64Array([2n, 3n]) };
    expect(Array.from(concat([a, b], 0).data as BigInt64Array)).toEqual([1n, 2n, 3n]);
    expect(encodeTensor(a).data).toBe(Buffer.from(new BigInt64Array([1n]).buffer).toString("base64"));
  });

  it("refuses parts whose other dimensions differ (they would be laid out with the first part's strides)", () => {
    // Two images of different widths: [1,1,2,2] and [1,1,2,3].
    const a = t([1, 1, 2, 2], [1, 2, 3, 4]);
    const b = t([1, 1, 2, 3], [5, 6, 7, 8, 9, 10]);
    expect(() => concat([a, b], 0)).toThrow(/off the batch axis/);
    expect(() => concat([b, a], 0)).toThrow(/off the batch axis/);
  });

  it("refuses a part whose bytes do not match its shape, or another dtype or rank", () => {
    const a = t([1, 2], [1, 2]);
    expect(() => concat([a, t([1, 2], [3, 4, 5])], 0)).toThrow(/holds 12 bytes, its shape needs 8/);
    expect(() => concat([t([1, 2], [1]), a], 0)).toThrow(/holds 4 bytes/);
    expect(() => concat([a, { dtype: "int32", shape: [1, 2], data: new Int32Array(2) }], 0)).toThrow(/does not match/);
    expect(() => concat([a, t([2], [1, 2])], 0)).toThrow(/does not match/);
  });
});

describe("output policy", () => {
  const probs: Tensor = { dtype: "float32", shape: [2, 3], data: new Float32Array([0.1, 0.7, 0.2, 0.5, 0.25, 0.25]) };

  it("reduces to a label", () => {
    const r = applyOutputPolicy({ p: probs }, { labelOnly: true });
    expect(r.p?.shape).toEqual([2]);
    expect(Array.from(r.p?.data as Int32Array)).toEqual([1, 0]);
  });

  it("keeps top-k with indices and rounds", () => {
    const r = applyOutputPolicy({ p: probs }, { topK: 2, decimals: 1 });
    expect(r.p?.shape).toEqual([2, 2]);
    expect(Array.from(r.p?.data as Float32Array).map((v) => Number(v.toFixed(3)))).toEqual([0.7, 0.2, 0.5, 0.3]);
    expect(Array.from(r["p.indices"]?.data as Int32Array)).toEqual([1, 2, 0, 1]);
  });

  it("covers every numeric dtype, not only floats", () => {
    const scores = (dtype: "int8" | "uint8" | "int32" | "int16" | "uint16", data: Tensor["data"]): Tensor => ({
      dtype,
      shape: [2, 3],
      data,
    });
    for (const s of [
      scores("int8", Int8Array.from([1, 7, 2, 5, -3, 5])),
      scores("uint8", Uint8Array.from([1, 7, 2, 5, 3, 5])),
      scores("int16", Int16Array.from([1, 7, 2, 5, -3, 5])),
      scores("uint16", Uint16Array.from([1, 7, 2, 5, 3, 5])),
      scores("int32", Int32Array.from([1, 7, 2, 5, -3, 5])),
    ]) {
      const label = applyOutputPolicy({ p: s }, { labelOnly: true }).p;
      expect(label?.shape, s.dtype).toEqual([2]);
      expect(Array.from(label?.data as Int32Array), s.dtype).toEqual([1, 0]);
      const top = applyOutputPolicy({ p: s }, { topK: 1, decimals: 2 });
      expect(top.p?.dtype).toBe(s.dtype);
      expect(top.p?.shape).toEqual([2, 1]);
      expect(Array.from(top.p?.data as Int32Array)).toEqual([7, 5]);
      expect(Array.from(top["p.indices"]?.data as Int32Array)).toEqual([1, 0]);
    }
    const big: Tensor = { dtype: "int64", shape: [1, 3], data: BigInt64Array.from([5n, 9n, 9n]) };
    const top = applyOutputPolicy({ p: big }, { topK: 2 });
    expect(Array.from(top.p?.data as BigInt64Array)).toEqual([9n, 9n]);
    expect(Array.from(top["p.indices"]?.data as Int32Array)).toEqual([1, 2]);
    expect(Array.from(applyOutputPolicy({ p: big }, { labelOnly: true }).p?.data as Int32Array)).toEqual([1]);
  });

  it("drops outputs that are not allowed; tenant overrides only tighten", () => {
    expect(Object.keys(applyOutputPolicy({ p: probs, q: probs }, { allowedOutputs: ["q"] }))).toEqual(["q"]);
    expect(mergePolicies({ topK: 5, decimals: 4 }, { topK: 2, decimals: 6 })).toEqual({ topK: 2, decimals: 4 });
  });
});
