/**
 * JSON Lines both ways with web streams only: a batch file streamed from (async)
 * iterables of lines, and a results stream read line by line as it arrives.
 */

/** Flushes the upload in pieces of about this many bytes (not one chunk per line). */
const PIECE = 64 * 1024;

/** A stream of the lines' JSON, one per line; `encode` is called as the stream is read, not before. */
export function jsonlStream<T>(
  lines: Iterable<T> | AsyncIterable<T>,
  encode: (line: T) => unknown,
): ReadableStream<Uint8Array> {
  const it =
    Symbol.asyncIterator in lines
      ? (lines as AsyncIterable<T>)[Symbol.asyncIterator]()
      : (lines as Iterable<T>)[Symbol.iterator]();
  const utf8 = new TextEncoder();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let piece = "";
      while (piece.length < PIECE) {
        const next = await it.next();
        if (next.done) {
          if (piece) controller.enqueue(utf8.encode(piece));
          controller.close();
          return;
        }
        piece += `${JSON.stringify(encode(next.value))}\n`;
      }
      controller.enqueue(utf8.encode(piece));
    },
    async cancel() {
      await it.return?.();
    },
  });
}

/** The lines of a UTF-8 stream as they arrive, blank ones skipped; stopping early cancels the stream. */
export async function* readLines(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const reader = body.getReader();
  const utf8 = new TextDecoder();
  let rest = "";
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      rest += utf8.decode(value, { stream: true });
      let start = 0;
      for (let nl = rest.indexOf("\n"); nl >= 0; nl = rest.indexOf("\n", start)) {
        const line = rest.slice(start, nl).trim();
        start = nl + 1;
        if (line) yield line;
      }
      rest = rest.slice(start);
    }
    rest += utf8.decode();
    if (rest.trim()) yield rest.trim();
    finished = true;
  } finally {
    // Stopped early (the caller broke off, or a read failed): the rest is not wanted. A
    // cancel that fails adds nothing to the error already on its way, if any.
    if (!finished) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}
