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

/** An ordinary client: commands fail after one retry while Redis is down. */
export function redisClient(url: string, onError: ErrorSink, extra: RedisOptions = {}): Redis {
  const r = new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: true, connectTimeout: 2000, ...extra });
  r.on("error", onError);
  return r;
}
