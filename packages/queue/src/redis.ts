import { Redis, type RedisOptions } from "ioredis";

export type { Redis } from "ioredis";

type ErrorSink = (err: Error) => void;

/**
 * A connection for BullMQ: it needs `maxRetriesPerRequest: null` so blocking
 * commands survive reconnects. Kept apart from ordinary clients, which should fail
 * fast instead (the API answers 503 rather than hanging).
 */
export function bullConnection(url: string, onError: ErrorSink, extra: RedisOptions = {}): Redis {
  const r = new Redis(url, { maxRetriesPerRequest: null, enableReadyCheck: true, ...extra });
  r.on("error", onError);
  return r;
}

/**
 * An ordinary client: commands fail after one retry while Redis is down. (Not
 * auto-pipelined: ioredis 5.9's auto-pipelining crashes the process when a MULTI
 * shares its tick; concurrent commands are pipelined on the wire anyway.)
 */
export function redisClient(url: string, onError: ErrorSink, extra: RedisOptions = {}): Redis {
  const r = new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: true, connectTimeout: 2000, ...extra });
  r.on("error", onError);
  return r;
}

/**
 * Whether an error means Redis is unreachable (as opposed to a bug): callers answer
 * 503 and retry later instead of failing hard.
 */
export function isRedisUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (err.name === "MaxRetriesPerRequestError") return true;
  return /Connection is closed|Stream isn't writeable|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|LOADING|Connection in subscriber mode/i.test(
    err.message,
  );
}
