import { describe, expect, it } from "vitest";
import {
  fromBfloat16Bits,
  fromFloat16Bits,
  isNonFiniteHalf,
  toBfloat16Bits,
  toFloat16Bits,
  widenBfloat16,
} from "./half.js";

const ALL = Array.from({ length: 0x10000 }, (_, i) => i);
const hex = (n: number) => `0x${n.toString(16).padStart(4, "0")}`;

describe("float16", () => {
  it.each([
    [1, 0x3c00],
    [-2, 0xc000],
    [0.5, 0x3800],
    [65504, 0x7bff], // largest finite
    [65519.99, 0x7bff], // below the midpoint to 65536: stays finite
    [65520, 0x7c00], // the midpoint rounds to even, which is Inf
    [1e6, 0x7c00],
    [-1e6, 0xfc00],
    [Number.POSITIVE_INFINITY, 0x7c00],
    [Number.NEGATIVE_INFINITY, 0xfc00],
    [Number.NaN, 0x7e00],
    [0, 0x0000],
    [-0, 0x8000],
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -24, 0x0001], // smallest subnormal
    [1023 * 2 ** -24, 0x03ff], // largest subnormal
    [1023.5 * 2 ** -24, 0x0400], // tie between the largest subnormal (odd) and the smallest normal: even
    [2 ** -25, 0x0000], // tie between 0 and the smallest subnormal: even, +0
    [-(2 ** -25), 0x8000], // … and -0 below zero
    [1.5 * 2 ** -24, 0x0002], // tie between subnormals 1 and 2: even
    [2 ** -26, 0x0000],
    [1 + 2 ** -11, 0x3c00], // tie between 1 and 1+2^-10: even mantissa
    [1 + 3 * 2 ** -11, 0x3c02], // tie between mantissas 1 and 2: even
    [1 + 2 ** -11 + 2 ** -40, 0x3c01], // just past the tie: up
    // Just past a tie by less than float32 resolves: float64 → float32 → float16 would
    // round twice (to the tie, then to even, 0x3c00); narrowing straight from float64 does not.
    [1 + 2 ** -11 + 2 ** -30, 0x3c01],
    [0.1, 0x2e66],
    [-65504, 0xfbff],
  ])("narrows %d to %s", (x, bits) => {
    expect(hex(toFloat16Bits(x))).toBe(hex(bits));
  });

  it.each([
    [0x0000, 0],
    [0x3c00, 1],
    [0xc000, -2],
    [0x0001, 2 ** -24],
    [0x03ff, 1023 * 2 ** -24],
    [0x0400, 2 ** -14],
    [0x7bff, 65504],
    [0x2e66, 0.0999755859375],
    [0x7c00, Number.POSITIVE_INFINITY],
    [0xfc00, Number.NEGATIVE_INFINITY],
  ])("widens %s exactly", (bits, x) => {
    expect(fromFloat16Bits(bits)).toBe(x);
  });

  it("keeps the sign of zero and reads every NaN pattern as NaN", () => {
    expect(Object.is(fromFloat16Bits(0x8000), -0)).toBe(true);
    for (const b of [0x7c01, 0x7e00, 0x7fff, 0xfc01, 0xfe00, 0xffff]) expect(fromFloat16Bits(b)).toBeNaN();
  });

  it("round-trips every non-NaN pattern", () => {
    for (const b of ALL) {
      const v = fromFloat16Bits(b);
      if (!Number.isNaN(v)) expect(toFloat16Bits(v), hex(b)).toBe(b);
    }
  });

  it("rounds every midpoint between neighbours to the even one, and just off it to the nearer", () => {
    // 0x7bff's neighbour is Inf; its midpoint (65520) is a case above.
    for (let b = 0; b < 0x7bff; b++) {
      const lo = fromFloat16Bits(b);
      const hi = fromFloat16Bits(b + 1);
      const mid = (lo + hi) / 2; // exact in float64
      const even = b % 2 === 0 ? b : b + 1;
      expect(toFloat16Bits(mid), hex(b)).toBe(even);
      expect(toFloat16Bits(-mid), hex(b)).toBe(0x8000 | even);
      const nudge = (hi - lo) / 1024;
      expect(toFloat16Bits(mid - nudge), hex(b)).toBe(b);
      expect(toFloat16Bits(mid + nudge), hex(b)).toBe(b + 1);
    }
  });

  it("agrees with Math.f16round where the runtime has it (Node 24)", () => {
    const f16round = (Math as { f16round?: (x: number) => number }).f16round;
    if (!f16round) return expect(typeof f16round).toBe("undefined");
    let seed = 7;
    for (let i = 0; i < 20_000; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      const x = ((seed / 2 ** 32) * 2 - 1) * 2 ** ((i % 40) - 26);
      expect(fromFloat16Bits(toFloat16Bits(x)), String(x)).toBe(f16round(x));
    }
  });
});

describe("bfloat16", () => {
  it.each([
    [1, 0x3f80],
    [-2, 0xc000],
    [0, 0x0000],
    [-0, 0x8000],
    [Number.POSITIVE_INFINITY, 0x7f80],
    [Number.NEGATIVE_INFINITY, 0xff80],
    [Number.NaN, 0x7fc0],
    [1 + 2 ** -8, 0x3f80], // tie: even mantissa
    [1 + 3 * 2 ** -8, 0x3f82], // tie between mantissas 1 and 2: even
    [1 + 2 ** -8 + 2 ** -30, 0x3f81], // just past a tie by less than float32 resolves
    [(2 - 2 ** -7) * 2 ** 127, 0x7f7f], // largest finite
    [(2 - 2 ** -8) * 2 ** 127, 0x7f80], // the midpoint past it rounds to even, which is Inf
    [1e39, 0x7f80], // past float32's range
    [2 ** -126, 0x0080], // smallest normal
    [2 ** -133, 0x0001], // smallest subnormal
    [2 ** -134, 0x0000], // tie with 0: even
    [3 * 2 ** -134, 0x0002], // tie between subnormals 1 and 2: even
    [1e-50, 0x0000], // below float32's range: +0
    [-1e-50, 0x8000],
  ])("narrows %d to %s", (x, bits) => {
    expect(hex(toBfloat16Bits(x))).toBe(hex(bits));
  });

  it("is float32's top half: every pattern widens to the float32 with those bits, and back", () => {
    const f32 = new Float32Array(1);
    const u32 = new Uint32Array(f32.buffer);
    for (const b of ALL) {
      u32[0] = b << 16;
      const v = f32[0] as number;
      if (Number.isNaN(v)) {
        expect(fromBfloat16Bits(b)).toBeNaN();
        continue;
      }
      expect(Object.is(fromBfloat16Bits(b), v), hex(b)).toBe(true);
      expect(toBfloat16Bits(v), hex(b)).toBe(b);
    }
  });

  it("narrows float32 values as the usual bit formula does (round to nearest even)", () => {
    const f32 = new Float32Array(1);
    const u32 = new Uint32Array(f32.buffer);
    let seed = 11;
    for (let i = 0; i < 50_000; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      u32[0] = seed;
      const v = f32[0] as number;
      if (Number.isNaN(v)) continue;
      const expected = ((seed + 0x7fff + ((seed >>> 16) & 1)) >>> 16) & 0xffff;
      expect(toBfloat16Bits(v), `0x${seed.toString(16)}`).toBe(expected);
    }
  });

  it("widens a whole array exactly (the worker's float32 feed)", () => {
    const bits = Uint16Array.from(ALL);
    const wide = widenBfloat16(bits);
    expect(wide).toBeInstanceOf(Float32Array);
    for (const b of ALL) {
      const w = wide[b] as number;
      const v = fromBfloat16Bits(b);
      expect(Number.isNaN(v) ? Number.isNaN(w) : Object.is(w, v), hex(b)).toBe(true);
    }
  });
});

describe("isNonFiniteHalf", () => {
  it("is true exactly where the exponent bits are all set", () => {
    for (const b of ALL) {
      expect(isNonFiniteHalf(b, "float16"), hex(b)).toBe(!Number.isFinite(fromFloat16Bits(b)));
      expect(isNonFiniteHalf(b, "bfloat16"), hex(b)).toBe(!Number.isFinite(fromBfloat16Bits(b)));
    }
    expect([0x7c00, 0xfc00, 0x7e00, 0x7c01].map((b) => isNonFiniteHalf(b, "float16"))).toEqual([
      true,
      true,
      true,
      true,
    ]);
    expect([0x7f80, 0xff80, 0x7fc0, 0x7f81].map((b) => isNonFiniteHalf(b, "bfloat16"))).toEqual([
      true,
      true,
      true,
      true,
    ]);
    expect(isNonFiniteHalf(0x7bff, "float16")).toBe(false);
    expect(isNonFiniteHalf(0x7f7f, "bfloat16")).toBe(false);
  });
});
