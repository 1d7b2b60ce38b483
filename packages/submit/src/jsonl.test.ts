import { describe, expect, it } from "vitest";
import { type JsonLine, jsonLines } from "./jsonl.js";

async function collect(pieces: string[], maxBytes = 1 << 20, maxLineBytes = 1 << 16): Promise<JsonLine[]> {
  const out: JsonLine[] = [];
  for await (const l of jsonLines(
    (async function* () {
      for (const p of pieces) yield Buffer.from(p);
    })(),
    { maxBytes, maxLineBytes },
  )) {
    out.push(l);
  }
  return out;
}

const text = (ls: JsonLine[]) => ls.map((l) => ("bytes" in l ? [l.line, l.bytes.toString()] : [l.line, l.tooLong]));

describe("jsonLines", () => {
  it("splits lines across chunk boundaries, numbers them as an editor does and skips blank ones", async () => {
    const ls = await collect(['{"a"', ":1}\n\n  \r\n", '{"b":2}\r\n{"c"', ":3}"]);
    expect(text(ls)).toEqual([
      [1, '{"a":1}'],
      [4, '{"b":2}'],
      [5, '{"c":3}'],
    ]);
  });

  it("reports a line over its bound by length without keeping it, and goes on with the next", async () => {
    const ls = await collect(["x".repeat(10), "y".repeat(10), "\n", "ok\n"], 1 << 20, 15);
    expect(text(ls)).toEqual([
      [1, 20],
      [2, "ok"],
    ]);
  });

  it("throws PAYLOAD_TOO_LARGE once the stream passes its bound, before reading further", async () => {
    let pulled = 0;
    const source = (async function* () {
      for (let i = 0; i < 100; i++) {
        pulled++;
        yield Buffer.from("0123456789\n");
      }
    })();
    const read = async () => {
      for await (const _ of jsonLines(source, { maxBytes: 50, maxLineBytes: 100 })) {
        // consume
      }
    };
    await expect(read()).rejects.toMatchObject({ code: "PAYLOAD_TOO_LARGE" });
    expect(pulled).toBe(5);
  });
});
