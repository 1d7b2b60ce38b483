import { coerceError } from "@citadel/contracts";
import type { RedisConn } from "./redis.js";

/** A stream entry as XREADGROUP / XAUTOCLAIM return it. */
export type StreamEntry = [id: string, fields: string[]];

/**
 * A consumer group on a stream, reading from its start (entries written before any
 * reader ran are read too); one that exists already is left as it is.
 */
export async function ensureStreamGroup(redis: RedisConn, stream: string, group: string): Promise<void> {
  try {
    await redis.xgroup("CREATE", stream, group, "0", "MKSTREAM");
  } catch (err) {
    if (!/BUSYGROUP/.test(coerceError(err).message)) throw err;
  }
}

/**
 * Takes over the entries other readers of the group took and left idle for `idleMs`
 * (they died, or could not finish them), page by page (at most 100 pages a call), and
 * hands each non-empty page to `handle`. Entries deleted meanwhile are skipped.
 */
export async function claimStaleEntries(
  redis: RedisConn,
  o: { stream: string; group: string; consumer: string; idleMs: number; page: number },
  handle: (entries: StreamEntry[]) => Promise<void>,
): Promise<void> {
  let cursor = "0-0";
  for (let page = 0; page < 100; page++) {
    const [next, entries] = (await redis.xautoclaim(
      o.stream,
      o.group,
      o.consumer,
      o.idleMs,
      cursor,
      "COUNT",
      o.page,
    )) as [string, (StreamEntry | null)[], ...unknown[]];
    const live = entries.filter((e): e is StreamEntry => Array.isArray(e) && Array.isArray(e[1]));
    if (live.length > 0) await handle(live);
    if (next === "0-0") return;
    cursor = next;
  }
}
