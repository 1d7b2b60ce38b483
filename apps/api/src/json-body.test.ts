import { describe, expect, it } from "vitest";
import { parseJsonBody } from "./json-body.js";

const parse = (s: string | Buffer, depth = 8) => parseJsonBody(Buffer.isBuffer(s) ? s : Buffer.from(s), depth);
const codeOf = (fn: () => unknown) => {
  try {
    fn();
    return "ok";
  } catch (e) {
    return (e as { code?: string }).code ?? "thrown";
  }
};

describe("parseJsonBody", () => {
  it("parses ordinary JSON, including keys repeated in different objects", () => {
    expect(parse('{"a":{"x":1},"b":{"x":"}{[\\""}, "c":[{"x":1},{"x":2}]}')).toEqual({
      a: { x: 1 },
      b: { x: '}{["' },
      c: [{ x: 1 }, { x: 2 }],
    });
  });
  it.each([
    ["duplicate keys", '{"a":1,"a":2}'],
    ["escaped duplicate keys", '{"a":1,"\\u0061":2}'],
    ["deep nesting", "[".repeat(9) + "]".repeat(9)],
    ["prototype keys", '{"__proto__":{"admin":true}}'],
    ["garbage", "{nope"],
  ])("refuses %s", (_l, body) => {
    expect(codeOf(() => parse(body))).toBe("MALFORMED_JSON");
  });
  it("refuses invalid UTF-8", () => {
    expect(codeOf(() => parse(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d])))).toBe("MALFORMED_JSON");
  });
});
