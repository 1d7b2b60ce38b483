import { CitadelError } from "@citadel/contracts";
import { describe, expect, it } from "vitest";
import { readNpy } from "./npy.js";

/**
 * A .npy file built by hand, as NumPy lays it out: magic, version, header length
 * (2 bytes in 1.0, 4 in 2.0/3.0), the dict padded with spaces to a multiple of 64
 * and ended by a newline, then the data.
 */
function npy(dict: string, data: Uint8Array, major = 1): Uint8Array {
  const lengthBytes = major === 1 ? 2 : 4;
  const unpadded = 8 + lengthBytes + Buffer.byteLength(dict, "utf8") + 1;
  const header = `${dict}${" ".repeat((64 - (unpadded % 64)) % 64)}\n`;
  const head = Buffer.alloc(8 + lengthBytes);
  head.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
  const len = Buffer.byteLength(header, "utf8");
  if (major === 1) head.writeUInt16LE(len, 8);
  else head.writeUInt32LE(len, 8);
  return new Uint8Array(Buffer.concat([head, Buffer.from(header, "utf8"), data]));
}
const dict = (descr: string, shape: string, fortran = "False") =>
  `{'descr': '${descr}', 'fortran_order': ${fortran}, 'shape': ${shape}, }`;
const bytes = (a: { buffer: ArrayBufferLike; byteOffset: number; byteLength: number }) =>
  new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function refusal(file: Uint8Array): string {
  try {
    readNpy(file, "in.npy");
  } catch (err) {
    if (err instanceof CitadelError) return `${err.code}: ${err.message}`;
    throw err;
  }
  throw new Error("readNpy accepted the file");
}

describe("readNpy", () => {
  it("reads every supported dtype in format 1.0, with the shape from the header and the bytes as written", () => {
    const cases: [string, string, Uint8Array, number[], string][] = [
      ["<f4", "(2, 3)", bytes(new Float32Array([1, 2, 3, 4.5, -5, 6])), [2, 3], "float32"],
      ["<f8", "(2,)", bytes(new Float64Array([0.1, -0.2])), [2], "float64"],
      ["|i1", "(3,)", bytes(new Int8Array([-1, 0, 1])), [3], "int8"],
      ["<i1", "(1,)", bytes(new Int8Array([-128])), [1], "int8"],
      ["|u1", "(2, 1)", new Uint8Array([0, 255]), [2, 1], "uint8"],
      ["<u1", "(1,)", new Uint8Array([7]), [1], "uint8"],
      ["<i2", "(2,)", bytes(new Int16Array([-300, 300])), [2], "int16"],
      ["<u2", "(2,)", bytes(new Uint16Array([1, 65535])), [2], "uint16"],
      ["<i4", "(1, 1, 2)", bytes(new Int32Array([-7, 7])), [1, 1, 2], "int32"],
      ["<i8", "(2,)", bytes(new BigInt64Array([-(2n ** 40n), 3n])), [2], "int64"],
      ["|b1", "(4,)", new Uint8Array([1, 0, 0, 1]), [4], "bool"],
    ];
    for (const [descr, shape, data, want, dtype] of cases) {
      const t = readNpy(npy(dict(descr, shape), data));
      expect({ descr, dtype: t.dtype, shape: t.shape }).toEqual({ descr, dtype, shape: want });
      expect(Buffer.from(t.bytes).equals(Buffer.from(data)), descr).toBe(true);
    }
  });

  it("reads formats 2.0 and 3.0 (4-byte header length; 3.0 a UTF-8 header), scalars and empty arrays", () => {
    const f = bytes(new Float32Array([1.5, 2.5]));
    expect(readNpy(npy(dict("<f4", "(2,)"), f, 2)).shape).toEqual([2]);
    expect(readNpy(npy(dict("<f4", "(1, 2)"), f, 3)).shape).toEqual([1, 2]);
    const scalar = readNpy(npy(dict("<f8", "()"), bytes(new Float64Array([42]))));
    expect([scalar.shape, new Float64Array(scalar.bytes.slice().buffer)[0]]).toEqual([[], 42]);
    expect(readNpy(npy(dict("<f4", "(0, 3)"), new Uint8Array(0))).shape).toEqual([0, 3]);
    // Keys in another order and double quotes are still the same dict.
    const reordered = `{"shape": (2,), "fortran_order": False, "descr": "<f4"}`;
    expect(readNpy(npy(reordered, f)).dtype).toBe("float32");
  });

  it("refuses truncated data, extra bytes and a header longer than the file", () => {
    const full = npy(dict("<f4", "(2, 3)"), bytes(new Float32Array(6)));
    expect(refusal(full.subarray(0, full.byteLength - 1))).toBe(
      "TENSOR_ENCODING_INVALID: in.npy: truncated: shape (2, 3) of <f4 needs 24 bytes of data, the file has 23",
    );
    expect(refusal(npy(dict("<f4", "(2,)"), bytes(new Float32Array(3))))).toMatch(
      /in\.npy: 4 bytes after the data that shape \(2\) of <f4 needs/,
    );
    expect(refusal(full.subarray(0, 40))).toMatch(
      /truncated: the header is \d+ bytes but the file ends before it does/,
    );
    expect(refusal(full.subarray(0, 9))).toMatch(/truncated: the header length is missing/);
  });

  it("refuses Fortran order, big-endian and unknown or structured dtypes, naming what is supported", () => {
    expect(refusal(npy(dict("<f4", "(2, 2)", "True"), bytes(new Float32Array(4))))).toMatch(
      /in\.npy: fortran_order is True; only C order is read/,
    );
    expect(refusal(npy(dict(">f4", "(1,)"), bytes(new Float32Array(1))))).toMatch(
      /dtype '>f4' is not supported \(big-endian: .*\); supported: <f4 <f8 .*\|b1$/,
    );
    for (const descr of ["<f2", "<u4", "<u8", "<c8", "|O", "<U3", "|S4", "<M8[ns]"])
      expect(refusal(npy(dict(descr, "(1,)"), new Uint8Array(8))), descr).toMatch(
        new RegExp(`dtype '${descr.replace(/[[\]|]/g, "\\$&")}' is not supported; supported:`),
      );
    const structured = `{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (1,), }`;
    expect(refusal(npy(structured, new Uint8Array(8)))).toMatch(/structured dtypes are not supported/);
  });

  it("refuses what is not a .npy file or a header it cannot read exactly", () => {
    expect(refusal(new Uint8Array(Buffer.from("PK\x03\x04 a zip, maybe an .npz")))).toMatch(/not a \.npy file/);
    const v4 = npy(dict("<f4", "(1,)"), bytes(new Float32Array(1)), 2);
    v4[6] = 4;
    expect(refusal(v4)).toMatch(/format version 4\.0 is not supported/);
    const f = bytes(new Float32Array(1));
    const bad: [string, RegExp][] = [
      [`{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}`, /unknown key 'extra'/],
      [`{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}`, /'descr' given twice/],
      [`{'descr': '<f4', 'shape': (1,)}`, /'fortran_order' is missing/],
      [`{'descr': '<f4', 'fortran_order': False, 'shape': (1.5,)}`, /expected ',' or '\)'/],
      [`{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}`, /expected a string, True, False/],
      [`{'descr': '<f4', 'fortran_order': False, 'shape': [1]}`, /'shape' is missing or not a tuple of integers/],
      [`{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}`, /'fortran_order' is missing or not a bool/],
      [`{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x`, /text after the dict/],
      [`{'descr': '<f4, 'fortran_order': False, 'shape': (1,)}`, /malformed header/],
    ];
    for (const [header, want] of bad) expect(refusal(npy(header, f)), header).toMatch(want);
  });
});
