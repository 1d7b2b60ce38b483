import { describe, expect, it } from "vitest";
import { toOrtTensor } from "./ort-tensor.js";

describe("toOrtTensor", () => {
  it("feeds float16 bits as the Uint16Array over the same bytes, on every Node (Node 24 has Float16Array)", () => {
    const bits = Uint16Array.from([0x3c00, 0xc000, 0x8000, 0x7bff]);
    const t = toOrtTensor({ dtype: "float16", shape: [1, 4], data: bits });
    expect(t.type).toBe("float16");
    expect(t.dims).toEqual([1, 4]);
    expect(t.data).toBeInstanceOf(Uint16Array);
    expect((t.data as Uint16Array).buffer).toBe(bits.buffer);
    expect(Array.from(t.data as Uint16Array)).toEqual(Array.from(bits));
  });

  it("feeds bfloat16 to the model's float32 input, widened exactly (bits << 16)", () => {
    const bits = Uint16Array.from([0x3f80, 0xc000, 0x0001, 0x8000, 0x7f7f]);
    const t = toOrtTensor({ dtype: "bfloat16", shape: [5], data: bits });
    expect(t.type).toBe("float32");
    expect(Array.from(new Uint32Array((t.data as Float32Array).buffer))).toEqual([
      0x3f800000, 0xc0000000, 0x00010000, 0x80000000, 0x7f7f0000,
    ]);
    expect(Object.is((t.data as Float32Array)[3], -0)).toBe(true);
  });

  it("feeds other dtypes as views of the bytes", () => {
    const f = Float32Array.from([1.5, -2]);
    const t = toOrtTensor({ dtype: "float32", shape: [2], data: f });
    expect(t.type).toBe("float32");
    expect((t.data as Float32Array).buffer).toBe(f.buffer);
  });

  it("feeds a view from the middle of a buffer as that view (a part of a batch), for every kind", () => {
    const f = Float32Array.from([9, 1.5, -2, 9]);
    const t = toOrtTensor({ dtype: "float32", shape: [2], data: f.subarray(1, 3) });
    expect(Array.from(t.data as Float32Array)).toEqual([1.5, -2]);
    expect((t.data as Float32Array).buffer).toBe(f.buffer);
    const h = Uint16Array.from([0xffff, 0x3c00, 0xc000, 0xffff]);
    expect(
      Array.from(toOrtTensor({ dtype: "float16", shape: [2], data: h.subarray(1, 3) }).data as Uint16Array),
    ).toEqual([0x3c00, 0xc000]);
    const b = Uint16Array.from([0xffff, 0x3f80, 0xffff]);
    expect(
      Array.from(toOrtTensor({ dtype: "bfloat16", shape: [1], data: b.subarray(1, 2) }).data as Float32Array),
    ).toEqual([1]);
  });
});
