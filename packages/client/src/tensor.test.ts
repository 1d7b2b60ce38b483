import { splitBinaryBody } from "@citadel/tensors";
import { describe, expect, it } from "vitest";
import { fromBase64, toBase64 } from "./base64.js";
import { fromEncoded, fromHalf, tensor, toHalf, toPayload } from "./tensor.js";
import { binaryJobs, fromBinaryView, jsonJob, toView } from "./wire.js";

describe("tensor", () => {
  it("takes its dtype from the array, or the one given when the array can hold it", () => {
    expect(tensor(new Float32Array(6), [2, 3]).dtype).toBe("float32");
    expect(tensor(new BigInt64Array(2), [2, 1]).dtype).toBe("int64");
    expect(tensor(new Uint8Array([1, 0]), [2], "bool").dtype).toBe("bool");
    expect(tensor(new Uint16Array(4), [4], "bfloat16").dtype).toBe("bfloat16");
    expect(() => tensor(new Float32Array(4), [4], "float16")).toThrow(
      "a float16 tensor takes a Uint16Array, not a Float32Array",
    );
    expect(() => tensor(new Int32Array(4), [4], "int64")).toThrow(/BigInt64Array/);
  });

  it("refuses a shape that does not hold the data", () => {
    expect(() => tensor(new Float32Array(5), [2, 3])).toThrow("shape [2,3] holds 6 elements, the data has 5");
    expect(() => tensor(new Float32Array(2), [2, 0.5])).toThrow(/whole numbers/);
  });

  it("narrows numbers to float16/bfloat16 bit patterns and widens them back exactly", () => {
    // 1, -2, 65504 (float16's largest), 2^-24 (its smallest subnormal); 1/3 rounds.
    const f16 = toHalf([1, -2, 65504, 2 ** -24, 1 / 3], "float16");
    expect([...f16.slice(0, 4)]).toEqual([0x3c00, 0xc000, 0x7bff, 0x0001]);
    expect([...fromHalf(f16, "float16").slice(0, 4)]).toEqual([1, -2, 65504, 2 ** -24]);
    expect(Math.abs((fromHalf(f16, "float16")[4] as number) - 1 / 3)).toBeLessThan(2 ** -11);
    const bf16 = toHalf([1, -0.5, 3.140625], "bfloat16");
    expect([...bf16]).toEqual([0x3f80, 0xbf00, 0x4049]);
    expect([...fromHalf(bf16, "bfloat16")]).toEqual([1, -0.5, 3.140625]);
  });
});

describe("the JSON form", () => {
  it("is base64 of the little-endian bytes, and reads back to the same values", () => {
    const t = tensor(Float32Array.from([1.5, -2, 0.25]), [1, 3]);
    const p = toPayload(t);
    // 1.5f = 0x3fc00000: little-endian 00 00 c0 3f.
    expect([...fromBase64(p.data as string).subarray(0, 4)]).toEqual([0, 0, 0xc0, 0x3f]);
    const back = fromEncoded("y", { dtype: "float32", shape: [1, 3], data: p.data as string });
    expect([...(back.data as Float32Array)]).toEqual([1.5, -2, 0.25]);
    const big = tensor(BigInt64Array.from([2n ** 62n, -1n]), [2]);
    const again = fromEncoded("z", { dtype: "int64", shape: [2], data: toPayload(big).data as string });
    expect([...(again.data as BigInt64Array)]).toEqual([2n ** 62n, -1n]);
  });

  it("refuses a result whose data does not fill its shape", () => {
    expect(() => fromEncoded("y", { dtype: "float32", shape: [2], data: toBase64(new Uint8Array(4)) })).toThrow(
      /needs 8 bytes, data has 4/,
    );
  });

  it("keeps JSON-form inputs as given and encodes tensors", () => {
    const body = jsonJob({
      model: "m",
      inputs: { a: tensor(new Int32Array([7]), [1]), b: { dtype: "float32", shape: [1], data: [0.5] } },
      priority: "high",
    });
    expect(body).toEqual({
      model: "m",
      inputs: {
        a: { dtype: "int32", shape: [1], data: toBase64(new Uint8Array([7, 0, 0, 0])) },
        b: { dtype: "float32", shape: [1], data: [0.5] },
      },
      priority: "high",
    });
  });
});

describe("binary bodies", () => {
  it("frame a job's header (KServe datatypes, binary_data_size) and then each input's bytes in order", () => {
    const a = tensor(Float32Array.from([1, 2]), [1, 2]);
    const b = tensor(BigInt64Array.from([3n]), [1, 1]);
    const { body, headers } = binaryJobs([{ model: "multi", inputs: { a, b }, outputs: ["y"], custom_id: "c" }], false);
    expect(headers["content-type"]).toBe("application/octet-stream");
    const { header, data } = splitBinaryBody(headers["inference-header-content-length"], body);
    expect(JSON.parse(new TextDecoder().decode(header))).toEqual({
      model: "multi",
      custom_id: "c",
      inputs: [
        { name: "a", datatype: "FP32", shape: [1, 2], parameters: { binary_data_size: 8 } },
        { name: "b", datatype: "INT64", shape: [1, 1], parameters: { binary_data_size: 8 } },
      ],
      outputs: [{ name: "y" }],
    });
    expect([...data]).toEqual([...new Uint8Array(a.data.buffer), ...new Uint8Array(b.data.buffer)]);
  });

  it("frame a bulk as {jobs}, job 0's bytes first", () => {
    const jobs = [1, 2].map((v) => ({ model: "m", inputs: { x: tensor(Int8Array.from([v]), [1]) } }));
    const { body, headers } = binaryJobs(jobs, true);
    const { header, data } = splitBinaryBody(headers["inference-header-content-length"], body);
    expect(JSON.parse(new TextDecoder().decode(header)).jobs).toHaveLength(2);
    expect([...data]).toEqual([1, 2]);
  });

  it("read a binary answer built by hand: the view's outputs as TypedArrays", () => {
    const y = Float32Array.from([0.5, -1]);
    const view = {
      id: "m.1",
      status: "completed",
      model: "m",
      version: "1",
      createdAt: "2026-01-01T00:00:00.000Z",
      result: {
        provider: "cpu",
        batchSize: 1,
        queueMs: 1,
        inferenceMs: 1,
        outputs: [{ name: "y", datatype: "FP32", shape: [1, 2], parameters: { binary_data_size: 8 } }],
      },
    };
    const head = new TextEncoder().encode(JSON.stringify(view));
    const body = new Uint8Array([...head, ...new Uint8Array(y.buffer)]);
    const job = fromBinaryView(String(head.length), body);
    expect(job.result?.outputs.y?.shape).toEqual([1, 2]);
    expect(Array.from((job.result?.outputs.y?.data ?? []) as ArrayLike<number>)).toEqual([0.5, -1]);
    // Back in the JSON form, as GET answers it (the CLI prints this).
    expect(toView(job).result?.outputs.y).toEqual({
      dtype: "float32",
      shape: [1, 2],
      data: toBase64(new Uint8Array(y.buffer)),
    });
    expect(() => fromBinaryView(String(head.length), body.subarray(0, body.length - 1))).toThrow(/BINARY|bytes/);
  });

  it("are framed and read without Node's Buffer (as in a browser)", () => {
    const saved = globalThis.Buffer;
    // Removing a global for the length of a synchronous block.
    Reflect.set(globalThis, "Buffer", undefined);
    try {
      const x = tensor(Float32Array.from([1, 2, 3]), [3]);
      const { body, headers } = binaryJobs([{ model: "m", inputs: { x } }], false);
      const p = toPayload(x);
      const back = fromEncoded("x", { dtype: "float32", shape: [3], data: p.data as string });
      expect([...(back.data as Float32Array)]).toEqual([1, 2, 3]);
      expect(body.length).toBe(Number(headers["inference-header-content-length"]) + 12);
    } finally {
      globalThis.Buffer = saved;
    }
  });
});
