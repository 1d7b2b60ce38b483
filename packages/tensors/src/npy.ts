import { CitadelError, DTYPE_BYTES, type DType, LIMITS } from "@citadel/contracts";
import { elementCount } from "./codec.js";
import type { RawTensor } from "./validate.js";

/**
 * A strict reader of NumPy's `.npy` format (format versions 1.0, 2.0 and 3.0): the
 * magic `\x93NUMPY`, a version, the header's length (2 bytes little-endian in 1.0, 4 in
 * 2.0 and 3.0), a header that is a Python dict literal with exactly `descr`,
 * `fortran_order` and `shape`, then the array's bytes. Only what Citadel's tensors can
 * carry unchanged is read: little-endian numbers and bools in C order. Anything else
 * (big-endian, Fortran order, structured or unknown dtypes, a size that does not match
 * the shape) is refused with TENSOR_ENCODING_INVALID rather than converted. The tensor's
 * bytes are a view of the file, never a copy.
 */

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
const PREAMBLE = MAGIC.length + 2;

/** The `descr` strings accepted, as NumPy writes them (one-byte types have no byte order: `|`). */
const DESCRS: Readonly<Record<string, DType>> = {
  "<f4": "float32",
  "<f8": "float64",
  "|i1": "int8",
  "<i1": "int8",
  "|u1": "uint8",
  "<u1": "uint8",
  "<i2": "int16",
  "<u2": "uint16",
  "<i4": "int32",
  "<i8": "int64",
  "|b1": "bool",
};

export const NPY_DESCRS: readonly string[] = Object.keys(DESCRS);

const refuse = (where: string, message: string) => new CitadelError("TENSOR_ENCODING_INVALID", `${where}: ${message}`);

/** Reads a `.npy` file's bytes as a tensor; `where` names the file in errors. */
export function readNpy(file: Uint8Array, where = "npy"): RawTensor {
  if (file.byteLength < PREAMBLE || MAGIC.some((b, i) => file[i] !== b))
    throw refuse(where, "not a .npy file (no \\x93NUMPY magic)");
  const major = file[6] ?? 0;
  const minor = file[7] ?? 0;
  if (minor !== 0 || major < 1 || major > 3)
    throw refuse(where, `.npy format version ${major}.${minor} is not supported (1.0, 2.0 and 3.0 are)`);
  const lengthBytes = major === 1 ? 2 : 4;
  if (file.byteLength < PREAMBLE + lengthBytes) throw refuse(where, "truncated: the header length is missing");
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const headerLength = major === 1 ? view.getUint16(PREAMBLE, true) : view.getUint32(PREAMBLE, true);
  const dataStart = PREAMBLE + lengthBytes + headerLength;
  if (dataStart > file.byteLength)
    throw refuse(where, `truncated: the header is ${headerLength} bytes but the file ends before it does`);
  let text: string;
  try {
    // 1.0 and 2.0 headers are latin-1 (ASCII in practice); 3.0 allows UTF-8.
    text = new TextDecoder(major === 3 ? "utf-8" : "latin1", { fatal: true }).decode(
      file.subarray(PREAMBLE + lengthBytes, dataStart),
    );
  } catch {
    throw refuse(where, "the header is not valid UTF-8");
  }
  const header = parseHeader(text, where);
  const dtype = DESCRS[header.descr];
  if (!dtype) {
    const hint = header.descr.startsWith(">") ? " (big-endian: save it little-endian, e.g. a.astype('<f4'))" : "";
    throw refuse(where, `dtype '${header.descr}' is not supported${hint}; supported: ${NPY_DESCRS.join(" ")}`);
  }
  if (header.fortranOrder)
    throw refuse(where, "fortran_order is True; only C order is read (save np.ascontiguousarray(a))");
  if (header.shape.length > LIMITS.maxRank)
    throw refuse(where, `shape (${header.shape.join(", ")}) has more than ${LIMITS.maxRank} dimensions`);
  const expected = elementCount(header.shape, where) * DTYPE_BYTES[dtype];
  const got = file.byteLength - dataStart;
  if (got !== expected) {
    throw refuse(
      where,
      got < expected
        ? `truncated: shape (${header.shape.join(", ")}) of ${header.descr} needs ${expected} bytes of data, the file has ${got}`
        : `${got - expected} bytes after the data that shape (${header.shape.join(", ")}) of ${header.descr} needs`,
    );
  }
  return { dtype, shape: header.shape, bytes: file.subarray(dataStart) };
}

interface NpyHeader {
  descr: string;
  fortranOrder: boolean;
  shape: number[];
}

/** A Python literal: tuples are arrays, lists (only structured dtypes use them) are kept apart. */
type Literal = string | boolean | number | Literal[] | { list: Literal[] };

/**
 * Parses the header dict: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`
 * followed by spaces and a newline. Only the literals NumPy writes are understood
 * (quoted strings, True/False, non-negative integers, tuples, lists); each key exactly once.
 */
function parseHeader(text: string, where: string): NpyHeader {
  let i = 0;
  const bad = (what: string) => refuse(where, `malformed header at character ${i}: ${what} (${JSON.stringify(text)})`);
  const space = () => {
    while (i < text.length && /\s/.test(text[i] ?? "")) i++;
  };
  const eat = (c: string) => {
    space();
    if (text[i] !== c) throw bad(`expected '${c}'`);
    i++;
  };
  const peek = () => {
    space();
    return text[i];
  };
  const value = (): Literal => {
    const c = peek();
    if (c === "'" || c === '"') {
      const end = text.indexOf(c, i + 1);
      if (end < 0) throw bad("unterminated string");
      const s = text.slice(i + 1, end);
      i = end + 1;
      return s;
    }
    if (c === "(" || c === "[") {
      const close = c === "(" ? ")" : "]";
      i++;
      const items: Literal[] = [];
      while (peek() !== close) {
        items.push(value());
        if (peek() === ",") i++;
        else if (peek() !== close) throw bad(`expected ',' or '${close}'`);
      }
      i++;
      return c === "(" ? items : { list: items };
    }
    const word = /^(True|False|[0-9]+)/.exec(text.slice(i))?.[0];
    if (!word) throw bad("expected a string, True, False, an integer, a tuple or a list");
    i += word.length;
    return word === "True" ? true : word === "False" ? false : Number(word);
  };
  const fields = new Map<string, Literal>();
  eat("{");
  while (peek() !== "}") {
    const key = value();
    if (typeof key !== "string") throw bad("expected a quoted key");
    if (fields.has(key)) throw bad(`'${key}' given twice`);
    eat(":");
    fields.set(key, value());
    if (peek() === ",") i++;
    else if (peek() !== "}") throw bad("expected ',' or '}'");
  }
  i++;
  space();
  if (i !== text.length) throw bad("text after the dict");
  for (const key of fields.keys())
    if (key !== "descr" && key !== "fortran_order" && key !== "shape") throw bad(`unknown key '${key}'`);
  const descr = fields.get("descr");
  const fortranOrder = fields.get("fortran_order");
  const shape = fields.get("shape");
  if (typeof descr !== "string")
    throw refuse(where, "the header's 'descr' is missing or not a simple dtype (structured dtypes are not supported)");
  if (typeof fortranOrder !== "boolean") throw refuse(where, "the header's 'fortran_order' is missing or not a bool");
  if (!Array.isArray(shape) || !shape.every((d): d is number => typeof d === "number" && Number.isSafeInteger(d)))
    throw refuse(where, "the header's 'shape' is missing or not a tuple of integers");
  return { descr, fortranOrder, shape };
}
