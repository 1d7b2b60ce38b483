import { CitadelError } from "@citadel/contracts";

export type VaultOperation =
  | "login"
  | "lookup-self"
  | "renew-self"
  | "datakey"
  | "decrypt"
  | "rewrap"
  | "rotate"
  | "read-key"
  | "sign"
  | "health";

/** Our own per-request deadline fired (the HTTP client's timeout is the first line). */
export class VaultDeadlineError extends Error {
  override readonly name = "VaultDeadlineError";
  constructor(readonly timeoutMs: number) {
    super(`no answer within ${timeoutMs}ms`);
  }
}

interface HttpLikeError {
  response?: { statusCode?: unknown; body?: unknown };
  code?: unknown;
}

/** node-vault's error classes are not exported: its API errors carry `response.statusCode`. */
export function vaultStatus(err: unknown): number | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const status = (err as HttpLikeError).response?.statusCode;
  return typeof status === "number" ? status : undefined;
}

function vaultMessages(err: unknown): string[] {
  if (typeof err !== "object" || err === null) return [];
  const body = (err as HttpLikeError).response?.body;
  if (typeof body !== "object" || body === null) return [];
  const errors = (body as { errors?: unknown }).errors;
  return Array.isArray(errors) ? errors.filter((e): e is string => typeof e === "string") : [];
}

function networkCode(err: unknown): string {
  if (err instanceof VaultDeadlineError) return "DEADLINE";
  if (typeof err === "object" && err !== null) {
    const code = (err as HttpLikeError).code;
    if (typeof code === "string" && /^[A-Z0-9_]{2,40}$/.test(code)) return code;
  }
  return "UNKNOWN";
}

const CIPHERTEXT = /vault:v\d+:[A-Za-z0-9+/=_-]*/g;
const VAULT_TOKEN = /\b(?:hvs|hvb|hvr|s|b|r)\.[A-Za-z0-9_-]{8,}/g;
const LONG_OPAQUE = /[A-Za-z0-9+/_-]{24,}={0,2}/g;

/**
 * Removes anything secret from a string bound for a message, details or a log: the known
 * secrets (token, secret_id, JWT), wrapped keys, token-shaped and long opaque strings
 * (base64 key material, JWT segments).
 */
export function redact(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const secret of secrets) {
    if (secret.length >= 4) out = out.split(secret).join("[redacted]");
  }
  return out
    .replace(CIPHERTEXT, "vault:v?:[redacted]")
    .replace(VAULT_TOKEN, "[redacted]")
    .replace(LONG_OPAQUE, "[redacted]")
    .slice(0, 300);
}

const UNWRAP_OPS: ReadonlySet<VaultOperation> = new Set(["decrypt", "rewrap"]);

/**
 * Maps whatever a Vault call threw to a CitadelError whose message, details and cause
 * carry no secret. The original error (axios config with the X-Vault-Token header, request
 * body with ciphertexts, response body with plaintext) is deliberately NOT attached.
 */
export function toCitadelError(
  op: VaultOperation,
  err: unknown,
  secrets: readonly string[],
  timeoutMs: number,
): CitadelError {
  if (err instanceof CitadelError) return err;
  const status = vaultStatus(err);
  const vaultErrors = vaultMessages(err)
    .slice(0, 3)
    .map((m) => redact(m, secrets));
  const summary = vaultErrors.length > 0 ? `: ${vaultErrors.join("; ")}` : "";
  const make = (
    code: "VAULT_UNAVAILABLE" | "VAULT_DENIED" | "KEY_UNWRAP_FAILED",
    message: string,
    extra: Record<string, unknown> = {},
  ): CitadelError => {
    const details: Record<string, unknown> = { operation: op, ...extra };
    if (status !== undefined) details.status = status;
    if (vaultErrors.length > 0) details.vaultErrors = vaultErrors;
    return new CitadelError(code, message, details, { cause: new Error(`${message}${summary}`) });
  };

  if (status === undefined) {
    const reason = networkCode(err);
    const message =
      reason === "DEADLINE" || reason === "ECONNABORTED" || reason === "ETIMEDOUT"
        ? `Vault did not answer ${op} within ${timeoutMs}ms`
        : `Vault unreachable during ${op} (${reason})`;
    return make("VAULT_UNAVAILABLE", message, { reason });
  }
  if (status === 503) {
    const isSealed = vaultErrors.some((m) => /sealed/i.test(m));
    return make("VAULT_UNAVAILABLE", isSealed ? `Vault is sealed (${op})` : `Vault unavailable during ${op} (503)`, {
      sealed: isSealed,
    });
  }
  if (status >= 500 || status === 429 || status === 412) {
    return make("VAULT_UNAVAILABLE", `Vault unavailable during ${op} (${status})`);
  }
  if (UNWRAP_OPS.has(op) && (status === 400 || status === 404)) {
    return make("KEY_UNWRAP_FAILED", `Vault could not unwrap the data key (${status})`);
  }
  if (status === 401 || status === 403) {
    return make("VAULT_DENIED", op === "login" ? "Vault login denied" : `Vault denied ${op} (permission denied)`);
  }
  return make("VAULT_DENIED", op === "login" ? `Vault login rejected (${status})` : `Vault rejected ${op} (${status})`);
}
