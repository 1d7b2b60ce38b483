import { type EncodedTensor, thrownCode, type V2InferRequest } from "@citadel/contracts";
import { describe, expect, it } from "vitest";
import { v2Answer, v2Inputs, v2ModelMetadata } from "./open-inference.js";

const enc = (dtype: EncodedTensor["dtype"], shape: number[], a: ArrayBufferView): EncodedTensor => ({
  dtype,
  shape,
  data: Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("base64"),
});
const meta = { modelName: "m", modelVersion: "1", id: "req-1", jobId: "m.job" };
const f32 = (b: Uint8Array) => Array.from(new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)));

describe("v2Inputs", () => {
  it("flattens nested data that mirrors the shape, and takes flat data as it is", () => {
    const req: V2InferRequest = {
      inputs: [
        {
          name: "a",
          datatype: "FP32",
          shape: [2, 2],
          data: [
            [1, 2],
            [3, 4],
          ],
        },
        { name: "b", datatype: "BOOL", shape: [3], data: [true, false, true] },
      ],
    };
    expect(v2Inputs(req, undefined)).toEqual({
      a: { dtype: "float32", shape: [2, 2], data: [1, 2, 3, 4] },
      b: { dtype: "bool", shape: [3], data: [true, false, true] },
    });
  });

  it("refuses nesting that does not mirror the shape, and leaves that are not numbers", () => {
    const one = (data: unknown[], shape = [2, 2]) => ({
      inputs: [{ name: "a", datatype: "FP32" as const, shape, data }],
    });
    expect(thrownCode(() => v2Inputs(one([[1, 2], [3]]), undefined))).toBe("TENSOR_SHAPE_MISMATCH");
    expect(thrownCode(() => v2Inputs(one([[1, 2, 3, 4]]), undefined))).toBe("TENSOR_SHAPE_MISMATCH");
    expect(thrownCode(() => v2Inputs(one([1, "2", 3, 4]), undefined))).toBe("TENSOR_ENCODING_INVALID");
    expect(
      thrownCode(() =>
        v2Inputs(
          one([
            [1, 2],
            [3, [4]],
          ]),
          undefined,
        ),
      ),
    ).toBe("TENSOR_ENCODING_INVALID");
  });

  it("cuts binary inputs from the bytes in order and keeps JSON ones beside them", () => {
    const bytes = Buffer.concat([Buffer.from(new Float32Array([1, 2]).buffer), Buffer.from([1, 0])]);
    const req: V2InferRequest = {
      inputs: [
        { name: "x", datatype: "FP32", shape: [2], parameters: { binary_data_size: 8 } },
        { name: "j", datatype: "INT32", shape: [1], data: [7] },
        { name: "b", datatype: "BOOL", shape: [2], parameters: { binary_data_size: 2 } },
      ],
    };
    const out = v2Inputs(req, bytes) as Record<string, { bytes?: Uint8Array; data?: unknown }>;
    expect(f32(out.x?.bytes as Uint8Array)).toEqual([1, 2]);
    expect(out.j?.data).toEqual([7]);
    expect(Array.from(out.b?.bytes ?? [])).toEqual([1, 0]);
  });

  it("refuses an input with both forms, with neither, named twice, or sized in a JSON body", () => {
    const x = { name: "x", datatype: "FP32" as const, shape: [1] };
    const sized = { ...x, parameters: { binary_data_size: 4 } };
    const four = new Uint8Array(4);
    expect(thrownCode(() => v2Inputs({ inputs: [{ ...sized, data: [1] }] }, four))).toBe("VALIDATION_FAILED");
    expect(thrownCode(() => v2Inputs({ inputs: [x] }, four))).toBe("BINARY_DATA_SIZE_MISSING");
    expect(thrownCode(() => v2Inputs({ inputs: [x] }, undefined))).toBe("VALIDATION_FAILED");
    expect(thrownCode(() => v2Inputs({ inputs: [sized] }, undefined))).toBe("VALIDATION_FAILED");
    const twice = { inputs: [sized, sized] };
    expect(thrownCode(() => v2Inputs(twice, new Uint8Array(8)))).toBe("VALIDATION_FAILED");
    expect(thrownCode(() => v2Inputs({ inputs: [sized] }, new Uint8Array(5)))).toBe("BINARY_DATA_SIZE_MISMATCH");
  });

  it("keeps an input named __proto__ a name (refused later as unknown), not a prototype", () => {
    const out = v2Inputs({ inputs: [{ name: "__proto__", datatype: "FP32", shape: [1], data: [1] }] }, undefined);
    expect(Object.keys(out)).toEqual(["__proto__"]);
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
  });
});

describe("v2Answer", () => {
  const outputs = {
    y: enc("float32", [1, 2], new Float32Array([0.5, -1])),
    "y.indices": enc("int32", [1, 2], new Int32Array([1, 0])),
    flag: enc("bool", [2], new Uint8Array([1, 0])),
  };

  it("answers JSON by default, BOOL as booleans", () => {
    const a = v2Answer({}, outputs, meta);
    expect("json" in a && a.json).toEqual({
      model_name: "m",
      model_version: "1",
      id: "req-1",
      parameters: { job_id: "m.job" },
      outputs: [
        { name: "y", datatype: "FP32", shape: [1, 2], data: [0.5, -1] },
        { name: "y.indices", datatype: "INT32", shape: [1, 2], data: [1, 0] },
        { name: "flag", datatype: "BOOL", shape: [2], data: [true, false] },
      ],
    });
  });

  it("sends as bytes what is asked for; an output's own binary_data wins over binary_data_output", () => {
    const a = v2Answer(
      { parameters: { binary_data_output: true }, outputs: [{ name: "flag", parameters: { binary_data: false } }] },
      outputs,
      meta,
    );
    if (!("body" in a)) throw new Error("expected a binary answer");
    const head = JSON.parse(a.body.subarray(0, a.headerLength).toString("utf8"));
    expect(head.outputs).toEqual([
      { name: "y", datatype: "FP32", shape: [1, 2], parameters: { binary_data_size: 8 } },
      { name: "y.indices", datatype: "INT32", shape: [1, 2], parameters: { binary_data_size: 8 } },
      { name: "flag", datatype: "BOOL", shape: [2], data: [true, false] },
    ]);
    const rest = a.body.subarray(a.headerLength);
    expect(rest.byteLength).toBe(16);
    expect(f32(rest.subarray(0, 8))).toEqual([0.5, -1]);
    expect(Array.from(new Int32Array(rest.buffer.slice(rest.byteOffset + 8, rest.byteOffset + 16)))).toEqual([1, 0]);
  });

  it("sends as bytes what JSON cannot carry exactly (int64 past 2^53, NaN), whatever was asked", () => {
    const big = { z: enc("int64", [2], new BigInt64Array([1n, 2n ** 60n])) };
    const nan = { z: enc("float64", [1], new Float64Array([Number.NaN])) };
    const safe = { z: enc("int64", [2], new BigInt64Array([1n, -(2n ** 52n)])) };
    expect("body" in v2Answer({}, big, meta)).toBe(true);
    expect("body" in v2Answer({}, nan, meta)).toBe(true);
    const a = v2Answer({}, safe, meta);
    expect("json" in a && a.json.outputs[0]?.data).toEqual([1, -(2 ** 52)]);
  });

  it("answers float16 and bfloat16 outputs in JSON with their values, not their bit patterns; NaN/Inf as bytes", () => {
    // 1, -2, the smallest float16 subnormal, 65504; bfloat16 1, -3, 1 + 2^-7, the smallest subnormal.
    const halves = {
      h: enc("float16", [4], new Uint16Array([0x3c00, 0xc000, 0x0001, 0x7bff])),
      b: enc("bfloat16", [4], new Uint16Array([0x3f80, 0xc040, 0x3f81, 0x0001])),
    };
    const a = v2Answer({}, halves, meta);
    expect("json" in a && a.json.outputs.map((o) => [o.name, o.datatype, o.data])).toEqual([
      ["h", "FP16", [1, -2, 2 ** -24, 65504]],
      ["b", "BF16", [1, -3, 1 + 2 ** -7, 2 ** -133]],
    ]);
    const inf = { h: enc("float16", [2], new Uint16Array([0x3c00, 0x7c00])) };
    const nan = { b: enc("bfloat16", [1], new Uint16Array([0x7fc0])) };
    expect("body" in v2Answer({}, inf, meta)).toBe(true);
    expect("body" in v2Answer({}, nan, meta)).toBe(true);
  });
});

describe("v2ModelMetadata", () => {
  it("gives KServe datatypes and -1 for dynamic dimensions", () => {
    const m = v2ModelMetadata("m", ["1", "2"], {
      inputs: [{ name: "a", dtype: "int64", shape: [null, 4], batchAxis: 0 }],
      outputs: [{ name: "y", dtype: "uint8", shape: [null, null], batchAxis: 0 }],
    });
    expect(m).toEqual({
      name: "m",
      versions: ["1", "2"],
      platform: "onnxruntime_onnx",
      inputs: [{ name: "a", datatype: "INT64", shape: [-1, 4] }],
      outputs: [{ name: "y", datatype: "UINT8", shape: [-1, -1] }],
    });
  });

  it("describes the outputs as the output policy shapes them: allowed ones only, labels, top-k and its indices", () => {
    const io = {
      inputs: [{ name: "x", dtype: "float32" as const, shape: [null, 4], batchAxis: 0 }],
      outputs: [
        { name: "probs", dtype: "float32" as const, shape: [null, 10], batchAxis: 0 },
        { name: "logits", dtype: "float32" as const, shape: [null, null], batchAxis: 0 },
        { name: "hidden", dtype: "float32" as const, shape: [null, 64], batchAxis: 0 },
      ],
    };
    const outputs = (policy: Parameters<typeof v2ModelMetadata>[3]) => v2ModelMetadata("m", ["1"], io, policy).outputs;
    expect(outputs({ allowedOutputs: ["probs", "logits"], topK: 3 })).toEqual([
      { name: "probs", datatype: "FP32", shape: [-1, 3] },
      { name: "probs.indices", datatype: "INT32", shape: [-1, 3] },
      { name: "logits", datatype: "FP32", shape: [-1, -1] },
      { name: "logits.indices", datatype: "INT32", shape: [-1, -1] },
    ]);
    expect(outputs({ allowedOutputs: ["probs"], labelOnly: true })).toEqual([
      { name: "probs", datatype: "INT32", shape: [-1] },
    ]);
    expect(outputs({ decimals: 2 })).toEqual(outputs({}));
    expect(outputs({ topK: 20, allowedOutputs: ["probs"] })).toEqual([
      { name: "probs", datatype: "FP32", shape: [-1, 10] },
      { name: "probs.indices", datatype: "INT32", shape: [-1, 10] },
    ]);
  });
});
