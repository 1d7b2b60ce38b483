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
      serializers: { err: pino.stdSerializers.err },
    },
    opts.destination ?? pino.destination({ sync: false }),
  );
}
