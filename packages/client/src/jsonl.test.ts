import { describe, expect, it } from "vitest";
import { jsonlStream, readLines } from "./jsonl.js";

/** A stream of the given byte pieces. */
function pieces(parts: Uint8Array[]): { stream: ReadableStream<Uint8Array>; cancelled: () => boolean } {
  let cancelled = false;
  let i = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(c) {
      const p = parts[i++];
      if (p) c.enqueue(p);
      else c.close();
    },
    cancel() {
      cancelled = true;
    },
  });
  return { stream, cancelled: () => cancelled };
}

async function all<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

describe("readLines", () => {
  it("joins lines split across chunks (a multi-byte character included) and skips blank ones", async () => {
    const bytes = new TextEncoder().encode('{"a":"é"}\n\n{"b":2}\r\n{"c":3}');
    // Cut inside the two bytes of "é" and between \r and \n.
    const cuts = [0, 7, 8, 14, 18, bytes.length];
    const parts = cuts.slice(1).map((end, k) => bytes.subarray(cuts[k], end));
    expect(await all(readLines(pieces(parts).stream))).toEqual(['{"a":"é"}', '{"b":2}', '{"c":3}']);
  });

  it("cancels the stream when the reader stops early", async () => {
    const src = pieces([new TextEncoder().encode("1\n2\n"), new TextEncoder().encode("3\n")]);
    for await (const line of readLines(src.stream)) if (line === "1") break;
    expect(src.cancelled()).toBe(true);
  });
});

describe("jsonlStream", () => {
  it("streams an async iterable's lines as JSONL, encoding each as it is read", async () => {
    const encoded: number[] = [];
    async function* lines() {
      for (let i = 0; i < 3; i++) yield i;
    }
    const stream = jsonlStream(lines(), (i) => {
      encoded.push(i);
      return { custom_id: `r${i}`, n: i };
    });
    expect(encoded).toEqual([]);
    const text = new TextDecoder().decode(new Uint8Array(await new Response(stream).arrayBuffer()));
    expect(text).toBe('{"custom_id":"r0","n":0}\n{"custom_id":"r1","n":1}\n{"custom_id":"r2","n":2}\n');
  });

  it("sends a large file in pieces, not as one chunk per line", async () => {
    const stream = jsonlStream(
      Array.from({ length: 5000 }, (_, i) => i),
      (i) => ({ i, pad: "x".repeat(40) }),
    );
    const chunks = await all(stream as unknown as AsyncIterable<Uint8Array>);
    expect(chunks.length).toBeGreaterThan(1);
    expect(chunks.length).toBeLessThan(20);
    expect(new TextDecoder().decode(chunks.at(-1)).endsWith('"}\n')).toBe(true);
  });
});
