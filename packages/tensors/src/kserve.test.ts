import { CitadelError, DTYPE_BYTES, DType, thrownCode } from "@citadel/contracts";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  binaryDescriptor,
  DTYPE_TO_KSERVE,
  encodeBinaryBody,
  KSERVE_TO_DTYPE,
  type NamedRawTensor,
  sliceBinaryTensors,
  splitBinaryBody,
} from "./kserve.js";

const code = thrownCode;

const bytes = (...b: number[]) => new Uint8Array(b);
const desc = (name: string, size: number) => ({
  name,
  datatype: "UINT8" as const,
  shape: [size],
  parameters: { binary_data_size: size },
});

describe("KServe datatypes", () => {
  it("map one to one onto Citadel dtypes", () => {
    for (const d of DType.options) expect(KSERVE_TO_DTYPE[DTYPE_TO_KSERVE[d]]).toBe(d);
    expect(Object.keys(KSERVE_TO_DTYPE)).toHaveLength(DType.options.length);
  });
});

describe("splitBinaryBody", () => {
  const body = Buffer.from('{"a":1}\u0001\u0002', "latin1");

  it("cuts the header and the data as views of the body", () => {
    const { header, data } = splitBinaryBody("7", body);
    expect(Buffer.from(header).toString()).toBe('{"a":1}');
    expect([...data]).toEqual([1, 2]);
    expect(header.buffer).toBe(body.buffer);
    expect(data.buffer).toBe(body.buffer);
    expect(splitBinaryBody("9", body).data.byteLength).toBe(0);
  });

  it.each([
    ["missing", undefined],
    ["empty", ""],
    ["negative", "-1"],
    ["fractional", "1.5"],
    ["exponent", "1e1"],
    ["signed", "+7"],
    ["spaced", " 7"],
    ["hex", "0x7"],
    ["repeated", ["7", "7"]],
    ["past the body", "10"],
    ["far past the body", "999999999999999"],
  ])("refuses a header length that is %s", (_label, value) => {
    expect(code(() => splitBinaryBody(value, body))).toBe("BINARY_HEADER_LENGTH_INVALID");
  });
});

describe("sliceBinaryTensors", () => {
  it("hands out one view per tensor, in order, with the mapped dtype", () => {
    const data = bytes(1, 2, 3, 0, 0, 128, 63);
    const [a, b] = sliceBinaryTensors(
      [desc("a", 3), { name: "b", datatype: "FP32", shape: [1], parameters: { binary_data_size: 4 } }],
      data,
    );
    expect([a?.name, a?.dtype, [...(a?.bytes ?? [])]]).toEqual(["a", "uint8", [1, 2, 3]]);
    expect([b?.name, b?.dtype, b?.shape]).toEqual(["b", "float32", [1]]);
    expect(b?.bytes.buffer).toBe(data.buffer);
    expect(b?.bytes.byteOffset).toBe(3);
  });

  it("refuses sizes that do not add up: too few bytes, or bytes left over", () => {
    expect(code(() => sliceBinaryTensors([desc("a", 3), desc("b", 2)], bytes(1, 2, 3, 4)))).toBe(
      "BINARY_DATA_SIZE_MISMATCH",
    );
    expect(code(() => sliceBinaryTensors([desc("a", 3)], bytes(1, 2, 3, 4)))).toBe("BINARY_DATA_SIZE_MISMATCH");
    expect(code(() => sliceBinaryTensors([], bytes(1)))).toBe("BINARY_DATA_SIZE_MISMATCH");
    expect(sliceBinaryTensors([], bytes())).toEqual([]);
  });
});

const dtype = fc.constantFrom(...DType.options);
const tensor: fc.Arbitrary<NamedRawTensor> = fc
  .record({
    name: fc.string({ minLength: 1, maxLength: 12 }),
    dtype,
    shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 3 }),
    seed: fc.integer(),
  })
  .map(({ name, dtype: d, shape, seed }) => {
    const n = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[d];
    return { name, dtype: d, shape, bytes: Uint8Array.from({ length: n }, (_, i) => (seed + i * 31) & 0xff) };
  });

describe("encodeBinaryBody", () => {
  it("round-trips through splitBinaryBody and sliceBinaryTensors for any tensors and header", () => {
    fc.assert(
      fc.property(fc.array(tensor, { maxLength: 5 }), fc.jsonValue(), (tensors, extra) => {
        const header = { extra, outputs: tensors.map(binaryDescriptor) };
        const { body, headerLength } = encodeBinaryBody(header, tensors);
        const { header: head, data } = splitBinaryBody(String(headerLength), body);
        const parsed = JSON.parse(Buffer.from(head).toString("utf8"));
        expect(parsed).toEqual(JSON.parse(JSON.stringify(header)));
        const back = sliceBinaryTensors(parsed.outputs, data);
        expect(back.map((t) => ({ ...t, bytes: [...t.bytes] }))).toEqual(
          tensors.map((t) => ({ ...t, bytes: [...t.bytes] })),
        );
      }),
    );
  });
});
