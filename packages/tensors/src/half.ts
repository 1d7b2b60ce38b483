/**
 * float16 (IEEE 754 binary16: 1 sign, 5 exponent, 10 mantissa bits) and bfloat16 (the
 * top half of a float32: 1, 8, 7) as raw 16-bit patterns. Numbers narrow to them with
 * round-to-nearest-even straight from the float64 (never through float32, which would
 * round twice); patterns widen to numbers exactly.
 */

interface HalfFormat {
  mantissaBits: number;
  bias: number;
  /** The exponent field all ones: Inf (mantissa 0) or NaN. */
  expMask: number;
  quietNaN: number;
}

const FP16: HalfFormat = { mantissaBits: 10, bias: 15, expMask: 0x7c00, quietNaN: 0x7e00 };
const BF16: HalfFormat = { mantissaBits: 7, bias: 127, expMask: 0x7f80, quietNaN: 0x7fc0 };
const SIGN = 0x8000;

/** Rounds a non-negative number to an integer, ties to even. */
function roundHalfEven(q: number): number {
  const f = Math.floor(q);
  const d = q - f; // exact: q is below 2^12 here
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** floor(log2(a)) for a finite a > 0, exact (Math.log2 may be off by one next to a power of two). */
function exponentOf(a: number): number {
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  else if (2 ** (e + 1) <= a) e++;
  return e;
}

function narrow(x: number, f: HalfFormat): number {
  if (Number.isNaN(x)) return f.quietNaN;
  const sign = x < 0 || Object.is(x, -0) ? SIGN : 0;
  const a = Math.abs(x);
  if (a === 0) return sign;
  const emin = 1 - f.bias;
  const emax = f.bias;
  if (a === Number.POSITIVE_INFINITY) return sign | f.expMask;
  const e = exponentOf(a);
  // Subnormal (or rounding up to the smallest normal, which the bit layout carries into).
  if (e < emin) return sign | roundHalfEven(a * 2 ** (f.mantissaBits - emin));
  if (e > emax) return sign | f.expMask;
  // q holds the implicit leading 1, so a mantissa that rounds up to 2^(m+1) carries into
  // the exponent, and past the largest exponent into Inf: IEEE overflow under RNE.
  const q = roundHalfEven(a * 2 ** (f.mantissaBits - e));
  return sign | (((e + f.bias - 1) << f.mantissaBits) + q);
}

/** The float16 nearest `x` (ties to even); out of range becomes ±Inf, NaN the quiet NaN 0x7e00. */
export function toFloat16Bits(x: number): number {
  return narrow(x, FP16);
}

/** The bfloat16 nearest `x` (ties to even); out of range becomes ±Inf, NaN the quiet NaN 0x7fc0. */
export function toBfloat16Bits(x: number): number {
  return narrow(x, BF16);
}

/** The exact value of a float16 pattern. */
export function fromFloat16Bits(h: number): number {
  const exp = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  const v =
    exp === 0
      ? m * 2 ** -24
      : exp === 0x1f
        ? m === 0
          ? Number.POSITIVE_INFINITY
          : Number.NaN
        : (1024 + m) * 2 ** (exp - 25);
  return h & SIGN ? -v : v;
}

const scratch = new DataView(new ArrayBuffer(4));

/** The exact value of a bfloat16 pattern (it is the float32 whose top 16 bits it is). */
export function fromBfloat16Bits(b: number): number {
  scratch.setUint32(0, (b & 0xffff) << 16);
  return scratch.getFloat32(0);
}

/** Whether a pattern is NaN or ±Inf, from its exponent bits alone (0x7C00 in float16, 0x7F80 in bfloat16, all set). */
export function isNonFiniteHalf(bits: number, dtype: "float16" | "bfloat16"): boolean {
  const mask = dtype === "float16" ? FP16.expMask : BF16.expMask;
  return (bits & mask) === mask;
}

/** bfloat16 patterns widened to float32, exactly (each is the top half of its float32). */
export function widenBfloat16(bits: Uint16Array): Float32Array {
  const out = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = (bits[i] as number) << 16;
  return new Float32Array(out.buffer);
}
