import { CitadelError, type TensorSpec, thrownCode } from "@citadel/contracts";
import { describe, expect, it } from "vitest";
import { concat, slices, split } from "./batch.js";
import { encodeTensor, type Tensor } from "./codec.js";
import { toBfloat16Bits, toFloat16Bits } from "./half.js";
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

  it.each([
    ["float32", [-1e30, 0], undefined, null],
    ["float32", [1, Number.NEGATIVE_INFINITY], undefined, ["TENSOR_NON_FINITE", 1]],
    ["float32", [Number.NaN, 1], undefined, ["TENSOR_NON_FINITE", 0]],
    ["float32", [0, 0, -3], [-2, 2], ["TENSOR_OUT_OF_RANGE", 2]],
    ["float32", [0, Number.POSITIVE_INFINITY], [-2, 2], ["TENSOR_NON_FINITE", 1]],
    ["float64", [0, 1e300], undefined, null],
    ["float64", [0, Number.NaN], [-1, 1], ["TENSOR_NON_FINITE", 1]],
    ["int32", [5, 6, 7], [0, 6], ["TENSOR_OUT_OF_RANGE", 2]],
    ["int32", [-9, 2 ** 31 - 1], undefined, null],
    ["uint8", [0, 255], [0, 255], null],
  ] as const)("scans %s values %j (range %j): %j", (dtype, values, range, want) => {
    const spec: TensorSpec = {
      name: "v",
      dtype,
      shape: [null, values.length],
      batchAxis: 0,
      ...(range ? { range: [range[0], range[1]] } : {}),
    };
    const io1 = { inputs: [spec], outputs: [], maxBatch: 4 };
    // Raw bytes, as a binary body or stored inputs reach validation: no JSON rounding first.
    const typed = { float32: Float32Array, float64: Float64Array, int32: Int32Array, uint8: Uint8Array }[dtype];
    const bytes = new Uint8Array(new typed(values as unknown as number[]).buffer);
    const run = () => validateInputs({ v: { dtype, shape: [1, values.length], bytes } }, io1);
    if (!want) {
      expect(run().batch).toBe(1);
      return;
    }
    const err = (() => {
      try {
        run();
      } catch (e) {
        return e as { code: string; details?: { index?: number } };
      }
      return null;
    })();
    expect([err?.code, err?.details?.index]).toEqual(want);
  });

  it("finds the first bad float32 element at every position of the unrolled scans, and their tails", () => {
    // The float32 scans take 4 (range) or 8 (finite only) elements a turn: a bad value
    // in any lane of a turn, in the tail after the last turn, or two of them, is found at
    // its own index; values that are merely large, tiny or negative pass.
    const fine = [3.4e38, -3.4e38, 1e-45, -0, 0.5];
    const bad = [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY];
    const scan = (values: Float32Array, range?: [number, number]) => {
      const spec: TensorSpec = { name: "v", dtype: "float32", shape: [null, values.length], batchAxis: 0 };
      if (range) spec.range = range;
      const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
      try {
        validateInputs(
          { v: { dtype: "float32", shape: [1, values.length], bytes } },
          { inputs: [spec], outputs: [], maxBatch: 1 },
        );
        return null;
      } catch (e) {
        const err = e as { code: string; details?: { index?: number } };
        return [err.code, err.details?.index];
      }
    };
    for (const n of [1, 3, 4, 7, 8, 9, 17, 40]) {
      const values = Float32Array.from({ length: n }, (_, i) => fine[i % fine.length] as number);
      expect(scan(values)).toBeNull();
      const inRange = Float32Array.from({ length: n }, (_, i) => (i % 3) - 1);
      expect(scan(inRange, [-1, 1])).toBeNull();
      for (let at = 0; at < n; at++) {
        for (const b of bad) {
          for (const [base, range] of [
            [values, undefined],
            [inRange, [-1, 1]],
          ] as const) {
            const v = base.slice();
            v[at] = b;
            if (at + 2 < n) v[at + 2] = Number.NaN;
            expect(scan(v, range ? [range[0], range[1]] : undefined)).toEqual(["TENSOR_NON_FINITE", at]);
          }
        }
        const v = inRange.slice();
        v[at] = 1.5;
        if (at + 1 < n) v[at + 1] = -2;
        expect(scan(v, [-1, 1])).toEqual(["TENSOR_OUT_OF_RANGE", at]);
      }
    }
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

describe("validateInputs with float16 and bfloat16", () => {
  const spec = (dtype: "float16" | "bfloat16", range?: [number, number]): TensorSpec => ({
    name: "h",
    dtype,
    shape: [null, 4],
    batchAxis: 0,
    ...(range ? { range } : {}),
  });
  const ioOf = (s: TensorSpec) => ({ inputs: [s], outputs: [], maxBatch: 4 });
  const raw = (...bits: number[]) => new Uint8Array(Uint16Array.from(bits).buffer);
  const base64 = (...bits: number[]) => Buffer.from(Uint16Array.from(bits).buffer).toString("base64");

  it.each(["float16", "bfloat16"] as const)(
    "takes %s as base64, raw bytes or JSON numbers (rounded to nearest even)",
    (dtype) => {
      const to = dtype === "float16" ? toFloat16Bits : toBfloat16Bits;
      const values = [1.5, -0, 0.1, -3];
      const bits = values.map(to);
      const io1 = ioOf(spec(dtype));
      const fromJson = validateInputs({ h: { dtype, shape: [1, 4], data: values } }, io1);
      const fromB64 = validateInputs({ h: { dtype, shape: [1, 4], data: base64(...bits) } }, io1);
      const fromRaw = validateInputs({ h: { dtype, shape: [1, 4], bytes: raw(...bits) } }, io1);
      for (const v of [fromJson, fromB64, fromRaw]) {
        expect(v.tensors.h?.data).toBeInstanceOf(Uint16Array);
        expect(Array.from(v.tensors.h?.data as Uint16Array)).toEqual(bits);
        expect(v.inputBytes).toBe(8);
      }
      expect(encodeTensor(fromJson.tensors.h as Tensor)).toEqual({ dtype, shape: [1, 4], data: base64(...bits) });
    },
  );

  it.each([
    ["float16 +Inf", "float16", [0x3c00, 0x7c00, 0, 0]],
    ["float16 -Inf", "float16", [0xfc00, 0, 0, 0]],
    ["float16 quiet NaN", "float16", [0, 0, 0, 0x7e00]],
    ["float16 signalling NaN", "float16", [0, 0x7c01, 0, 0]],
    ["float16 negative NaN", "float16", [0, 0, 0xffff, 0]],
    ["bfloat16 +Inf", "bfloat16", [0x3f80, 0x7f80, 0, 0]],
    ["bfloat16 -Inf", "bfloat16", [0xff80, 0, 0, 0]],
    ["bfloat16 quiet NaN", "bfloat16", [0, 0, 0, 0x7fc0]],
    ["bfloat16 signalling NaN", "bfloat16", [0, 0x7f81, 0, 0]],
  ] as const)("refuses %s on its bit pattern (raw and base64)", (_label, dtype, bits) => {
    const io1 = ioOf(spec(dtype));
    expect(code(() => validateInputs({ h: { dtype, shape: [1, 4], bytes: raw(...bits) } }, io1))).toBe(
      "TENSOR_NON_FINITE",
    );
    expect(code(() => validateInputs({ h: { dtype, shape: [1, 4], data: base64(...bits) } }, io1))).toBe(
      "TENSOR_NON_FINITE",
    );
  });

  it("accepts the largest finite values and subnormals, which share no pattern with Inf/NaN", () => {
    expect(() =>
      validateInputs(
        { h: { dtype: "float16", shape: [1, 4], bytes: raw(0x7bff, 0xfbff, 0x0001, 0x8000) } },
        ioOf(spec("float16")),
      ),
    ).not.toThrow();
    expect(() =>
      validateInputs(
        { h: { dtype: "bfloat16", shape: [1, 4], bytes: raw(0x7f7f, 0xff7f, 0x0001, 0x8000) } },
        ioOf(spec("bfloat16")),
      ),
    ).not.toThrow();
  });

  it("refuses JSON numbers past the format's range as they become Inf (as float32 does)", () => {
    expect(
      code(() =>
        validateInputs({ h: { dtype: "float16", shape: [1, 4], data: [1, 70000, 0, 0] } }, ioOf(spec("float16"))),
      ),
    ).toBe("TENSOR_NON_FINITE");
    // 65519 rounds to 65504, the largest float16: accepted.
    expect(() =>
      validateInputs({ h: { dtype: "float16", shape: [1, 4], data: [65519, 0, 0, 0] } }, ioOf(spec("float16"))),
    ).not.toThrow();
    expect(
      code(() =>
        validateInputs({ h: { dtype: "bfloat16", shape: [1, 4], data: [1e39, 0, 0, 0] } }, ioOf(spec("bfloat16"))),
      ),
    ).toBe("TENSOR_NON_FINITE");
  });

  it("checks the manifest's range on the exact value of each pattern", () => {
    const f16 = ioOf(spec("float16", [-1, 1]));
    // 1 + 2^-10 is the float16 just above 1: out of range; 1 itself is in.
    expect(
      code(() => validateInputs({ h: { dtype: "float16", shape: [1, 4], bytes: raw(0x3c01, 0, 0, 0) } }, f16)),
    ).toBe("TENSOR_OUT_OF_RANGE");
    expect(() =>
      validateInputs({ h: { dtype: "float16", shape: [1, 4], bytes: raw(0x3c00, 0xbc00, 0, 0) } }, f16),
    ).not.toThrow();
    const bf16 = ioOf(spec("bfloat16", [0, 255]));
    expect(code(() => validateInputs({ h: { dtype: "bfloat16", shape: [1, 4], data: [0, 256, 0, 0] } }, bf16))).toBe(
      "TENSOR_OUT_OF_RANGE",
    );
    // -0 is within [0, 255]; -2^-133 (a negative subnormal) is not.
    expect(() =>
      validateInputs({ h: { dtype: "bfloat16", shape: [1, 4], bytes: raw(0x8000, 0, 0, 0) } }, bf16),
    ).not.toThrow();
    expect(
      code(() => validateInputs({ h: { dtype: "bfloat16", shape: [1, 4], bytes: raw(0x8001, 0, 0, 0) } }, bf16)),
    ).toBe("TENSOR_OUT_OF_RANGE");
    // 255.5 rounds to 256 in bfloat16 (8 significant bits): refused after rounding, as the model would see it.
    expect(code(() => validateInputs({ h: { dtype: "bfloat16", shape: [1, 4], data: [255.5, 0, 0, 0] } }, bf16))).toBe(
      "TENSOR_OUT_OF_RANGE",
    );
  });

  it("refuses a byte count that is not 2 per element", () => {
    expect(
      code(() =>
        validateInputs({ h: { dtype: "float16", shape: [1, 4], bytes: new Uint8Array(7) } }, ioOf(spec("float16"))),
      ),
    ).toBe("TENSOR_DATA_LENGTH_MISMATCH");
    expect(
      code(() =>
        validateInputs({ h: { dtype: "float32", shape: [1, 4], bytes: new Uint8Array(8) } }, ioOf(spec("float16"))),
      ),
    ).toBe("TENSOR_DTYPE_MISMATCH");
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

  it("moves float16 patterns as they are", () => {
    const a: Tensor = { dtype: "float16", shape: [1, 2], data: Uint16Array.from([0x3c00, 0x8000]) };
    const b: Tensor = { dtype: "float16", shape: [2, 2], data: Uint16Array.from([0x7bff, 0x0001, 0xc000, 0x3555]) };
    const c = concat([a, b], 0);
    expect(Array.from(c.data as Uint16Array)).toEqual([0x3c00, 0x8000, 0x7bff, 0x0001, 0xc000, 0x3555]);
    expect(split(c, 0, [1, 2])).toEqual([a, b]);
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

  it("slices along the first axis as views of the same bytes, and along an inner axis as split's copies", () => {
    const c = t([3, 2], [1, 2, 3, 4, 5, 6]);
    const [a, b] = slices(c, 0, [1, 2]);
    expect(a).toEqual(t([1, 2], [1, 2]));
    expect(b).toEqual(t([2, 2], [3, 4, 5, 6]));
    expect(b?.data.buffer).toBe(c.data.buffer);
    expect(b?.data.byteOffset).toBe(8);
    // Leading dimensions of 1 keep each piece contiguous: still views.
    const one = t([1, 3, 2], [1, 2, 3, 4, 5, 6]);
    expect(slices(one, 1, [2, 1])[1]?.data.buffer).toBe(one.data.buffer);
    const inner = t([2, 3, 2], [1, 2, 3, 4, 5, 6, 10, 20, 30, 40, 50, 60]);
    const cut = slices(inner, 1, [1, 2]);
    expect(cut).toEqual(split(inner, 1, [1, 2]));
    expect(cut[0]?.data.buffer).not.toBe(inner.data.buffer);
    expect(() => slices(c, 0, [1, 1])).toThrow(/do not add up/);
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

  it("ranks and rounds float16 and bfloat16 by value, not by bit pattern", () => {
    for (const [dtype, to] of [
      ["float16", toFloat16Bits],
      ["bfloat16", toBfloat16Bits],
    ] as const) {
      // As patterns, -2 (sign bit set) would rank above every positive value.
      const t: Tensor = { dtype, shape: [1, 4], data: Uint16Array.from([-2, 0.3, 1.25, 0.7].map(to)) };
      const top = applyOutputPolicy({ p: t }, { topK: 2, decimals: 1 });
      expect(top.p?.dtype).toBe(dtype);
      expect(Array.from(top.p?.data as Uint16Array)).toEqual([1.3, 0.7].map(to));
      expect(Array.from(top["p.indices"]?.data as Int32Array)).toEqual([2, 3]);
      expect(Array.from(applyOutputPolicy({ p: t }, { labelOnly: true }).p?.data as Int32Array)).toEqual([2]);
    }
  });

  it("drops outputs that are not allowed; tenant overrides only tighten", () => {
    expect(Object.keys(applyOutputPolicy({ p: probs, q: probs }, { allowedOutputs: ["q"] }))).toEqual(["q"]);
    expect(mergePolicies({ topK: 5, decimals: 4 }, { topK: 2, decimals: 6 })).toEqual({ topK: 2, decimals: 4 });
  });
});
