import { randomBytes } from "node:crypto";

/** An error answered as Vault answers errors: `{"errors":[…]}` with a status code. */
export class VaultHttpError extends Error {
  override readonly name = "VaultHttpError";
  constructor(
    readonly status: number,
    readonly errors: string[],
  ) {
    super(errors[0] ?? `status ${status}`);
  }
}

export const permissionDenied = (): VaultHttpError => new VaultHttpError(403, ["permission denied"]);
export const badRequest = (message: string): VaultHttpError => new VaultHttpError(400, [message]);

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)?/g;
const UNIT_SECONDS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86_400 };

/** Vault durations: an integer number of seconds, or "1h30m", "10m", "45s". */
export function parseDurationSeconds(value: Json | undefined, field: string): number | undefined {
  if (value === undefined || value === null || value === "") return undefined;
  if (typeof value === "number") {
    if (!Number.isFinite(value) || value < 0) throw badRequest(`invalid ${field}`);
    return Math.floor(value);
  }
  if (typeof value !== "string") throw badRequest(`invalid ${field}`);
  if (/^\d+$/.test(value)) return Number.parseInt(value, 10);
  let total = 0;
  let consumed = 0;
  for (const match of value.matchAll(DURATION_PART)) {
    if (match.index !== consumed) throw badRequest(`invalid ${field}: ${value}`);
    const amount = Number.parseFloat(match[1] ?? "0");
    total += amount * (UNIT_SECONDS[match[2] ?? "s"] ?? 1);
    consumed += match[0].length;
  }
  if (consumed !== value.length || consumed === 0) throw badRequest(`invalid ${field}: ${value}`);
  return Math.floor(total);
}

export function str(body: JsonObject, field: string): string | undefined {
  const value = body[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") throw badRequest(`${field} must be a string`);
  return value;
}

export function bool(body: JsonObject, field: string, fallback: boolean): boolean {
  const value = body[field];
  if (value === undefined || value === null) return fallback;
  if (typeof value === "boolean") return value;
  if (value === "true" || value === "false") return value === "true";
  throw badRequest(`${field} must be a boolean`);
}

export function int(body: JsonObject, field: string, fallback: number): number {
  const value = body[field];
  if (value === undefined || value === null || value === "") return fallback;
  const n = typeof value === "number" ? value : typeof value === "string" ? Number(value) : Number.NaN;
  if (!Number.isInteger(n)) throw badRequest(`${field} must be an integer`);
  return n;
}

/** Vault accepts lists as JSON arrays or comma-separated strings. */
export function strList(body: JsonObject, ...fields: string[]): string[] | undefined {
  for (const field of fields) {
    const value = body[field];
    if (value === undefined || value === null) continue;
    if (typeof value === "string") {
      return value
        .split(",")
        .map((s) => s.trim())
        .filter((s) => s.length > 0);
    }
    if (Array.isArray(value) && value.every((v): v is string => typeof v === "string")) return value;
    throw badRequest(`${field} must be a list of strings`);
  }
  return undefined;
}

export function isBase64(value: string): boolean {
  return /^[A-Za-z0-9+/]*={0,2}$/.test(value) && value.length % 4 === 0;
}

export function decodeBase64(value: string | undefined, field: string): Buffer {
  if (value === undefined) throw badRequest(`missing ${field}`);
  if (!isBase64(value)) throw badRequest(`failed to base64-decode ${field}`);
  return Buffer.from(value, "base64");
}

export function randomId(prefix = ""): string {
  return prefix + randomBytes(18).toString("base64url");
}

export function uuid(): string {
  const h = randomBytes(16).toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export const nowSeconds = (): number => Math.floor(Date.now() / 1000);
