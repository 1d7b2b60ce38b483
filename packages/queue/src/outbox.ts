import { coerceError } from "@citadel/contracts";
import { keys, NOTIFICATIONS_MAX_LEN } from "./names.js";
import type { RedisConn } from "./redis.js";
import { scripts } from "./scripts/index.js";
import { claimStaleEntries, ensureStreamGroup, type StreamEntry } from "./stream-group.js";

/** The consumer group every API replica's outbox relay reads each queue's outbox in. */
export const OUTBOX_GROUP = "relay";

export interface OutboxRelaySettings {
  prefix: string;
  /** This reader's name in the group (unique per process). */
  consumer: string;
  /**
   * Entries another reader took and did not finish for this long are taken over (that
   * reader died). Short is safe: every effect is guarded, so an entry applied twice
   * (taken over from a slow reader) changes nothing the second time.
   */
  claimIdleMs: number;
  /** The longest pause between reads of idle outboxes (the pause doubles from 2 ms while nothing comes). */
  idleMaxMs: number;
  /**
   * Whether the model's final events reach {@link OutboxRelay.nudge} now (this process
   * listens to its queue's events): its outbox is then read when nudged, and every
   * `idleMaxMs` besides (an event lost to a reconnect), instead of polled. Absent: none.
   */
  followed?: (model: string) => boolean;
}

export interface OutboxLogger {
  warn(obj: object, msg: string): void;
}

/** One outbox entry as finishJobs-9.lua and settleFinal-3.lua write it (includes/outboxEntry.lua). */
export interface OutboxEntry {
  id: string;
  /** Its tenant; '' when the job's data could not be read (no share to release). */
  tenant: string;
  /** completed, failed or cancelled; '' when unknown (a job removed as it finished). */
  status: string;
  finishedAt: string;
  batch?: { id: string; line: number; record: string };
  /** Present when the outcome is to be notified: the callback URL ('' for the tenant's own). */
  notifyUrl?: string;
}

type Entry = StreamEntry;
const PAGE = 128;

/** An entry's fields, or null when it is not an outbox entry. */
export function parseOutboxEntry(fields: readonly string[]): OutboxEntry | null {
  const f = new Map<string, string>();
  for (let i = 0; i + 1 < fields.length; i += 2) f.set(fields[i] as string, fields[i + 1] as string);
  const id = f.get("id");
  const tenant = f.get("t");
  const status = f.get("s");
  if (!id || tenant === undefined || status === undefined) return null;
  const batchId = f.get("b");
  const record = f.get("r");
  const url = f.get("u");
  return {
    id,
    tenant,
    status,
    finishedAt: f.get("f") ?? "0",
    ...(batchId && record ? { batch: { id: batchId, line: Number(f.get("l") ?? 0), record } } : {}),
    ...(url !== undefined ? { notifyUrl: url } : {}),
  };
}

const FINAL = new Set(["completed", "failed", "cancelled"]);

/**
 * Applies what each job's final state implies outside its queue's slot: a worker (or a
 * cancel) writes one entry to the queue's outbox in the same script as that state's
 * bookkeeping (finishJobs-9.lua, or settleFinal-3.lua for a cancel); this relay, run by
 * every API replica in one consumer group, gives the tenant's quota share back
 * (quotaReleaseMany.lua, one call per tenant per read: the reservation marker is the
 * once-guard), records the batch line (batchRecord-3.lua: HSETNX on the line) and
 * appends the notification (the notifier's deterministic delivery id makes a repeat one
 * delivery), then deletes and acknowledges the entry. An entry whose effects
 * fail stays pending and is tried again; a reader that dies leaves its entries to be
 * taken over (XAUTOCLAIM). On a Redis Cluster each queue's outbox is in that queue's
 * slot, so each is read on its own: non-blocking reads of the outboxes together (a
 * blocking read per queue would hold a connection per model). An outbox whose queue's
 * events this process follows is read when a job's final event says an entry is there
 * (nudge), and every `idleMaxMs` besides; the others are polled, the pause doubling from
 * 2 ms while nothing comes (a poll per round per model: at a few jobs a second that was
 * several reads a job, each a wake-up of the API and of Redis).
 */
export class OutboxRelay {
  private models: readonly string[] = [];
  private readonly grouped = new Set<string>();
  private readonly lastClaim = new Map<string, number>();
  /** Outboxes whose reader left entries pending (effects failed): read again from the start. */
  private readonly retryOwn = new Set<string>();
  private closing = false;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  /** Models to read in the next round: a final event came, or a read came back full. */
  private nudged = new Set<string>();
  private readonly lastRead = new Map<string, number>();

  constructor(
    private readonly redis: RedisConn,
    private readonly s: OutboxRelaySettings,
    private readonly log: OutboxLogger,
  ) {}

  /** The models whose outboxes are read (the registry's). */
  setModels(models: readonly string[]): void {
    this.models = [...models];
    this.wake?.();
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** A job of `model` reached a final state: its outbox holds an entry, read it now. */
  nudge(model: string): void {
    this.nudged.add(model);
    this.wake?.();
  }

  /**
   * Stops after the round in progress; what was not finished stays pending for another
   * reader. A reader that leaves nothing pending in an outbox leaves its group there too,
   * so restarts do not pile up consumers.
   */
  async close(): Promise<void> {
    this.closing = true;
    this.wake?.();
    await this.loop;
    await Promise.all(
      [...this.grouped].map(async (stream) => {
        try {
          const mine = (await this.redis.xpending(stream, OUTBOX_GROUP, "-", "+", 1, this.s.consumer)) as unknown[];
          if (mine.length === 0) await this.redis.xgroup("DELCONSUMER", stream, OUTBOX_GROUP, this.s.consumer);
        } catch (err) {
          this.log.warn({ err: coerceError(err), stream }, "outbox relay: could not leave the consumer group");
        }
      }),
    );
  }

  private async run(): Promise<void> {
    const followed = this.s.followed ?? (() => false);
    let backoff = 0;
    while (!this.closing) {
      const now = Date.now();
      const nudged = this.nudged;
      this.nudged = new Set();
      const due = this.models.filter(
        (m) => nudged.has(m) || !followed(m) || now - (this.lastRead.get(m) ?? 0) >= this.s.idleMaxMs,
      );
      for (const m of due) this.lastRead.set(m, now);
      const handled = await Promise.all(due.map((m) => this.drain(m)));
      // Entries found by polling (a followed outbox's entries say nothing of the others').
      const polledEntries = handled.reduce((a, n, i) => a + (followed(due[i] as string) ? 0 : Math.max(0, n)), 0);
      let pause: number;
      // After a failed read (Redis down), a second before the next: one warning per second at most.
      if (handled.some((n) => n < 0)) pause = 1000;
      // A full page (more may be behind it), or a nudge during the round: read again now.
      else if (this.nudged.size > 0) pause = 0;
      else {
        // Polled outboxes: a read that came back short drained its outbox (re-reading at
        // once would find nothing), so 2 ms, doubling while nothing comes.
        const polled = this.models.some((m) => !followed(m));
        backoff = polledEntries > 0 ? 2 : Math.min(this.s.idleMaxMs, Math.max(2, backoff * 2));
        pause = polled ? backoff : this.s.idleMaxMs;
        // Followed outboxes: their safety read is due idleMaxMs after their last read.
        const t = Date.now();
        for (const m of this.models) {
          if (followed(m)) pause = Math.min(pause, (this.lastRead.get(m) ?? 0) + this.s.idleMaxMs - t);
        }
        pause = Math.max(1, pause);
      }
      if (pause > 0 && !this.closing) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, pause);
          this.wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        this.wake = undefined;
      }
    }
  }

  /**
   * One read of a model's outbox (and its stale and own pending entries now and then):
   * how many entries it finished, or -1 when reading failed.
   */
  private async drain(model: string): Promise<number> {
    const stream = keys.outbox(this.s.prefix, model);
    try {
      if (!this.grouped.has(stream)) await this.ensureGroup(stream);
      let done = 0;
      const now = Date.now();
      if (now - (this.lastClaim.get(stream) ?? 0) >= this.s.claimIdleMs / 2) {
        this.lastClaim.set(stream, now);
        done += await this.takeOverStale(stream);
      }
      if (this.retryOwn.delete(stream)) done += await this.apply(stream, await this.read(stream, "0"));
      const fresh = await this.read(stream, ">");
      if (fresh.length >= PAGE) this.nudged.add(model);
      done += await this.apply(stream, fresh);
      return done;
    } catch (err) {
      const e = coerceError(err);
      // The stream or its group went away (deleted by hand): make them again.
      if (/NOGROUP/.test(e.message)) this.grouped.delete(stream);
      else if (!this.closing) this.log.warn({ err: e, model }, "outbox relay: reading failed; retrying");
      return -1;
    }
  }

  private async read(stream: string, from: "0" | ">"): Promise<Entry[]> {
    const got = (await this.redis.xreadgroup(
      "GROUP",
      OUTBOX_GROUP,
      this.s.consumer,
      "COUNT",
      PAGE,
      "STREAMS",
      stream,
      from,
    )) as [string, Entry[]][] | null;
    // Pending entries deleted meanwhile come back with no fields.
    return (got?.[0]?.[1] ?? []).filter((e) => Array.isArray(e[1]));
  }

  private async ensureGroup(stream: string): Promise<void> {
    await ensureStreamGroup(this.redis, stream, OUTBOX_GROUP);
    this.grouped.add(stream);
  }

  /** Entries a reader took and left idle (it died or its effects failed): this one applies them. */
  private async takeOverStale(stream: string): Promise<number> {
    let done = 0;
    const o = { stream, group: OUTBOX_GROUP, consumer: this.s.consumer, idleMs: this.s.claimIdleMs, page: PAGE };
    await claimStaleEntries(this.redis, o, async (entries) => {
      done += await this.apply(stream, entries);
    });
    return done;
  }

  /**
   * Applies the entries' effects (all at once: on a cluster they go to their own
   * slots' nodes in parallel), then acknowledges and deletes those whose effects all
   * held; the others stay pending for the next round. Quota shares go back in one call
   * per tenant (quotaReleaseMany.lua: one tenant's keys share its slot), so a read of n
   * entries costs one script call per tenant, not one per entry; a call that fails
   * leaves all of that tenant's entries pending (a repeat releases nothing twice).
   */
  private async apply(stream: string, entries: Entry[]): Promise<number> {
    if (entries.length === 0) return 0;
    const parsed = entries.map(([id, fields]) => ({ id, e: parseOutboxEntry(fields) }));
    const byTenant = new Map<string, string[]>();
    for (const { e } of parsed) {
      if (!e || e.tenant === "") continue;
      byTenant.set(e.tenant, [...(byTenant.get(e.tenant) ?? []), e.id]);
    }
    const released = new Map<string, boolean>();
    const releases = [...byTenant].map(async ([tenant, ids]) => {
      try {
        await releaseQuotas(this.redis, this.s.prefix, tenant, ids);
        released.set(tenant, true);
      } catch (err) {
        this.log.warn({ err: coerceError(err), tenant }, "outbox relay: could not apply a tenant's quota shares");
        released.set(tenant, false);
      }
    });
    const outcomes = await Promise.all(
      parsed.map(async ({ id, e }) => {
        if (!e) {
          this.log.warn({ entry: id, stream }, "outbox relay: dropping an entry that is not an outbox entry");
          return id;
        }
        try {
          await this.effects(e);
          return id;
        } catch (err) {
          this.log.warn({ err: coerceError(err), jobId: e.id }, "outbox relay: could not apply a job's outcome");
          return null;
        }
      }),
    );
    await Promise.all(releases);
    const done = outcomes.filter(
      (id, i): id is string => id !== null && released.get(parsed[i]?.e?.tenant ?? "") !== false,
    );
    if (done.length < entries.length) this.retryOwn.add(stream);
    if (done.length === 0) return 0;
    // Deleted first, then acknowledged, in one round trip without MULTI (two commands, not
    // four): an XACK lost after its XDEL leaves only a pending reference to a deleted entry,
    // which reads skip and the next XAUTOCLAIM drops (Redis 7); its effects are done. Sent
    // back to back on the stream's connection (in that order), not as an ioredis pipeline:
    // a pipeline copies every script defined on the client (BullMQ's ~60) when it is made,
    // ~30 KB per read, most of a lone job's garbage here at light load.
    await Promise.all([this.redis.xdel(stream, ...done), this.redis.xack(stream, OUTBOX_GROUP, ...done)]);
    return done.length;
  }

  /** One entry's effects but its quota share (released per tenant in apply), each a no-op when repeated. */
  private effects(e: OutboxEntry): Promise<void> {
    return applyOutcome(this.redis, this.s.prefix, e, { quota: false });
  }
}

/** Gives back one tenant's settled jobs' quota shares, each once (quotaReleaseMany.lua); returns how many this call released. */
export function releaseQuotas(redis: RedisConn, prefix: string, tenant: string, jobIds: string[]): Promise<number> {
  return scripts(redis).quotaReleaseMany(
    keys.tenantQueuedJobs(prefix, tenant),
    keys.tenantQueuedBytes(prefix, tenant),
    jobIds.map((id) => keys.quotaHeld(prefix, tenant, id)),
  );
}

/**
 * What a job's final outcome implies outside its queue's slot, each step guarded so a
 * repeat is a no-op: its tenant's quota share back (quotaRelease-3.lua: the reservation
 * marker is the once-guard), its batch line (batchRecord-3.lua: HSETNX on the line) and,
 * unless `notify` is false, its notification (a repeat makes a second entry, which the
 * notifier's deterministic delivery id turns into one delivery). `quota: false` leaves the
 * share to the caller (the relay releases a read's shares per tenant).
 */
export async function applyOutcome(
  redis: RedisConn,
  prefix: string,
  e: OutboxEntry,
  opts: { notify?: boolean; quota?: boolean } = {},
): Promise<void> {
  const steps: Promise<unknown>[] = [];
  if (e.tenant !== "" && opts.quota !== false) {
    steps.push(
      scripts(redis).quotaRelease(
        keys.tenantQueuedJobs(prefix, e.tenant),
        keys.tenantQueuedBytes(prefix, e.tenant),
        keys.quotaHeld(prefix, e.tenant, e.id),
      ),
    );
  }
  const status = FINAL.has(e.status) ? (e.status as "completed" | "failed" | "cancelled") : undefined;
  if (status && e.batch) {
    steps.push(
      scripts(redis).batchRecord(
        [
          keys.batch(prefix, e.tenant, e.batch.id),
          keys.batchResults(prefix, e.tenant, e.batch.id),
          keys.notifications(prefix),
        ],
        {
          line: e.batch.line,
          record: e.batch.record,
          status,
          tenant: e.tenant,
          batchId: e.batch.id,
          maxLen: NOTIFICATIONS_MAX_LEN,
        },
      ),
    );
  }
  if (status && e.notifyUrl !== undefined && opts.notify !== false) {
    steps.push(
      redis.xadd(
        keys.notifications(prefix),
        "MAXLEN",
        "~",
        NOTIFICATIONS_MAX_LEN,
        "*",
        "k",
        "job",
        "id",
        e.id,
        "t",
        e.tenant,
        "e",
        `job.${status}`,
        "u",
        e.notifyUrl,
        "f",
        e.finishedAt,
      ),
    );
  }
  await Promise.all(steps);
}
