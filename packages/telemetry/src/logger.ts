import { type DestinationStream, type Logger, pino } from "pino";

export type { DestinationStream, Logger } from "pino";

/**
 * Paths scrubbed from every log line. A belt to the braces of never passing secrets
 * to the logger at all: tests grep full runs' logs for keys, tokens and tensor data.
 */
export const REDACT_PATHS = [
  "authorization",
  "req.headers.authorization",
  "req.headers.cookie",
  'req.headers["idempotency-key"]',
  "headers.authorization",
  "*.token",
  "*.apiKey",
  "*.password",
  "*.secretId",
  "*.plaintext",
  "*.dataKey",
  "*.wrappedKey",
  "*.data",
  "*.inputs",
  "*.outputs",
];

/** How deep the error serializer looks for commands' arguments (errors inside errors, arrays of them). */
const MAX_ERROR_DEPTH = 6;

/**
 * pino's error serializer with what an error carries of the commands that failed left
 * out: ioredis attaches the whole command to an error reply (`command.args`: an AUTH
 * password on WRONGPASS, a job's tensor bytes on OOM, a settle's results and callback
 * URLs on a script error), and nests such errors in others (a cluster's
 * `lastNodeError`, a transaction's `previousErrors`). The command's name stays; byte
 * arrays anywhere in an error become their length.
 */
export function serializeError(err: unknown): unknown {
  return scrub(pino.stdSerializers.err(err as Error), 0);
}

function scrub(v: unknown, depth: number): unknown {
  if (v === null || typeof v !== "object") return v;
  if (ArrayBuffer.isView(v)) return `[${v.byteLength} bytes]`;
  if (depth >= MAX_ERROR_DEPTH) return "[nested]";
  if (v instanceof Error) return scrub(pino.stdSerializers.err(v), depth + 1);
  if (Array.isArray(v)) return v.map((x) => scrub(x, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    if (k === "command" && x !== null && typeof x === "object") out[k] = { name: (x as { name?: unknown }).name };
    else out[k] = scrub(x, depth + 1);
  }
  return out;
}

export interface LoggerOptions {
  name: string;
  level?: string;
  /** Where lines go (default stdout); tests pass a capturing stream. */
  destination?: DestinationStream;
  base?: Record<string, unknown>;
}

export function createLogger(opts: LoggerOptions): Logger {
  return pino(
    {
      name: opts.name,
      level: opts.level ?? "info",
      base: { pid: process.pid, ...opts.base },
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      serializers: { err: serializeError },
    },
    opts.destination ?? pino.destination({ sync: false }),
  );
}
