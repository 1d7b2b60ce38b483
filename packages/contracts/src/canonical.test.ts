import { describe, expect, it } from "vitest";
import { canonicalJson } from "./canonical.js";

/** The definition, written out: what every fast path must equal. */
function reference(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((v) => reference(v === undefined ? null : v)).join(",")}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${reference(v)}`).join(",")}}`;
}

describe("canonicalJson", () => {
  it.each([
    ["flat record", { seq: 3, writer: "w:1", ok: true, none: null, gone: undefined, "": "empty key", é: "é", Z: 1 }],
    ["integer-like keys", { 10: "a", 2: "b", a: "c", "01": "d" }],
    ["numbers", { a: -0, b: 1e21, c: 0.1, d: Number.NaN, e: Number.POSITIVE_INFINITY }],
    ["nested", { b: { y: 1, x: [3, undefined, { q: 1, p: 2 }] }, a: "s" }],
    ["a Date (its own keys, not toJSON)", new Date(0)],
    ["an object with toJSON", { toJSON: () => "x", a: 1 }],
    ["array", [1, "a", null, { b: 2, a: 1 }]],
  ])("%s: equals the definition", (_label, value) => {
    expect(canonicalJson(value)).toBe(reference(value));
  });

  it("sorts keys by UTF-16 code units on the fast path as the definition does", () => {
    const keys = ["b", "a", "B", "ä", "aa", "a_", "A1", "\u{1F600}", "\uFFFF"];
    const obj = Object.fromEntries(keys.map((k, i) => [k, i]));
    expect(canonicalJson(obj)).toBe(reference(obj));
  });
});
