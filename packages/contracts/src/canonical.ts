/**
 * Canonical JSON for signing: keys sorted, no whitespace, undefined dropped (the
 * JSON Canonicalization Scheme's object rules; our manifests hold no floats that
 * need its number rules beyond what JSON.stringify already produces).
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v === undefined ? null : v)).join(",")}]`;
  // An object of plain values only (an audit record, one per job): JSON.stringify with
  // its sorted keys as the replacer writes exactly the form below, in native code.
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj).sort();
  if (typeof obj.toJSON !== "function" && keys.every((k) => isPlainValue(obj[k]))) return JSON.stringify(obj, keys);
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
}

function isPlainValue(v: unknown): boolean {
  const t = typeof v;
  return v === null || t === "string" || t === "number" || t === "boolean" || t === "undefined";
}
