import { CitadelError } from "@citadel/contracts";

/** A request line of a JSONL stream: its bytes, or (past the line bound) only how long it was. */
export type JsonLine = { line: number; bytes: Buffer } | { line: number; tooLong: number };

export interface JsonLinesLimits {
  /** The whole stream: past it the reader throws PAYLOAD_TOO_LARGE and reads no further. */
  maxBytes: number;
  /** One line: a longer one is skipped to its end (never buffered whole) and reported as too long. */
  maxLineBytes: number;
}

const NL = 0x0a;

/**
 * Splits a byte stream into lines as it arrives, holding at most one line (up to
 * maxLineBytes) in memory. Lines are numbered from 1 as a text editor does; blank ones
 * (whitespace only) are skipped, not yielded. A trailing "\r" is dropped (CRLF files).
 */
export async function* jsonLines(
  source: AsyncIterable<Buffer | string>,
  limits: JsonLinesLimits,
): AsyncGenerator<JsonLine> {
  let total = 0;
  let line = 1;
  let parts: Buffer[] = [];
  let size = 0;
  let over = false;
  const end = function* (): Generator<JsonLine> {
    if (over) yield { line, tooLong: size };
    else if (size > 0) {
      let bytes = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, size);
      if (bytes[bytes.length - 1] === 0x0d) bytes = bytes.subarray(0, bytes.length - 1);
      if (!isBlank(bytes)) yield { line, bytes };
    }
    parts = [];
    size = 0;
    over = false;
    line++;
  };
  for await (const piece of source) {
    const chunk = typeof piece === "string" ? Buffer.from(piece) : piece;
    total += chunk.length;
    if (total > limits.maxBytes) {
      throw new CitadelError("PAYLOAD_TOO_LARGE", `the batch file exceeds ${limits.maxBytes} bytes`, {
        limit: limits.maxBytes,
      });
    }
    let at = 0;
    while (at < chunk.length) {
      const nl = chunk.indexOf(NL, at);
      const stop = nl === -1 ? chunk.length : nl;
      const bit = chunk.subarray(at, stop);
      size += bit.length;
      if (size > limits.maxLineBytes) {
        over = true;
        parts = [];
      } else if (!over && bit.length > 0) parts.push(bit);
      if (nl === -1) break;
      yield* end();
      at = nl + 1;
    }
  }
  if (size > 0 || over) yield* end();
}

function isBlank(b: Buffer): boolean {
  for (const c of b) if (c !== 0x20 && c !== 0x09 && c !== 0x0d) return false;
  return true;
}
