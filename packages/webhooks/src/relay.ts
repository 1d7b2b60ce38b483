import { coerceError, type WebhookEvent } from "@citadel/contracts";
import { claimStaleEntries, ensureStreamGroup, keys, type RedisConn, type StreamEntry } from "@citadel/queue";
import type { Logger } from "@citadel/telemetry";
import type { JobsOptions, Queue } from "bullmq";
import { type DeliveryJob, type Notification, parseNotification } from "./record.js";
import { messageId } from "./sign.js";

/** The consumer group every API replica's relay reads the notifications stream in. */
export const RELAY_GROUP = "notifier";

export interface RelaySettings {
  prefix: string;
  /** This reader's name in the group (unique per process). */
  consumer: string;
  /** Delivery attempts and the first backoff (doubled each retry). */
  attempts: number;
  backoffMs: number;
  /** How long finished delivery jobs are kept: a notification read again within it is not delivered twice. */
  keepCompletedMs: number;
  keepFailedMs: number;
  /** How long one blocking read waits. */
  blockMs: number;
  /** Entries another reader took and did not hand off for this long are taken over (that reader died). */
  claimIdleMs: number;
}

export interface RelayDeps {
  /** An ordinary client: acknowledgements, take-overs, the group. */
  redis: RedisConn;
  /** A connection of its own for the blocking reads (maxRetriesPerRequest: null). */
  blocking: RedisConn;
  queue: Queue<DeliveryJob>;
  /** The body of a notification: the job's or batch's view as it is when handed off; undefined drops it. */
  describe: (n: Notification) => Promise<WebhookEvent | undefined>;
  log: Logger;
}

type Entry = StreamEntry;
const PAGE = 64;

/**
 * Hands completion notifications from the stream the settle scripts write to the
 * webhook delivery queue. Every API replica runs one, all in one consumer group, so
 * each entry is read by one of them; an entry is acknowledged (and deleted) only after
 * its delivery job is queued, so a replica dying in between leaves it pending, and
 * another replica takes it over (XAUTOCLAIM) once it has been idle for `claimIdleMs`.
 * A delivery job's id is the notification's message id: an entry handed off twice
 * (taken over after its reader queued it but died before acknowledging) makes one job.
 */
export class NotificationRelay {
  private readonly stream: string;
  private closing = false;
  private loop: Promise<void> | undefined;
  private lastClaim = 0;
  /** When to read this reader's own pending entries again (one it could not hand off), or 0. */
  private retryOwnAt = 0;

  constructor(
    private readonly d: RelayDeps,
    private readonly s: RelaySettings,
  ) {
    this.stream = keys.notifications(s.prefix);
  }

  start(): void {
    this.loop ??= this.run();
  }

  /**
   * Stops reading (a blocking read in progress is cut); what was not handed off stays
   * pending for another reader. A reader that leaves nothing pending leaves the group
   * too, so restarts do not pile up consumers.
   */
  async close(): Promise<void> {
    this.closing = true;
    this.d.blocking.disconnect();
    await this.loop;
    try {
      const pending = (await this.d.redis.xpending(
        this.stream,
        RELAY_GROUP,
        "-",
        "+",
        1,
        this.s.consumer,
      )) as unknown[];
      if (pending.length === 0) await this.d.redis.xgroup("DELCONSUMER", this.stream, RELAY_GROUP, this.s.consumer);
    } catch (err) {
      this.d.log.warn({ err: coerceError(err) }, "webhook relay: could not leave the consumer group");
    }
  }

  private async run(): Promise<void> {
    let grouped = false;
    while (!this.closing) {
      try {
        if (!grouped) grouped = await this.ensureGroup();
        if (Date.now() - this.lastClaim >= this.s.claimIdleMs / 2) {
          this.lastClaim = Date.now();
          await this.takeOverStale();
        }
        // Entries this reader took but could not hand off are tried again after a second,
        // not only when another reader's take-over (claimIdleMs) would find them.
        if (this.retryOwnAt !== 0 && Date.now() >= this.retryOwnAt) {
          this.retryOwnAt = 0;
          const own = (await this.d.redis.xreadgroup(
            "GROUP",
            RELAY_GROUP,
            this.s.consumer,
            "COUNT",
            PAGE,
            "STREAMS",
            this.stream,
            "0",
          )) as [string, Entry[]][] | null;
          const mine = (own?.[0]?.[1] ?? []).filter((e) => Array.isArray(e[1]));
          if (mine.length > 0) await this.handOff(mine);
        }
        const got = (await this.d.blocking.xreadgroup(
          "GROUP",
          RELAY_GROUP,
          this.s.consumer,
          "COUNT",
          PAGE,
          "BLOCK",
          this.s.blockMs,
          "STREAMS",
          this.stream,
          ">",
        )) as [string, Entry[]][] | null;
        const entries = got?.[0]?.[1] ?? [];
        if (entries.length > 0) await this.handOff(entries);
      } catch (err) {
        if (this.closing) break;
        const e = coerceError(err);
        // The stream or its group went away (deleted by hand): make them again.
        if (/NOGROUP/.test(e.message)) grouped = false;
        else this.d.log.warn({ err: e }, "webhook relay: reading notifications failed; retrying");
        this.retryOwnAt = Date.now() + 1000;
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  /** The group, reading from the stream's start: entries written before any API ran are delivered too. */
  private async ensureGroup(): Promise<boolean> {
    await ensureStreamGroup(this.d.redis, this.stream, RELAY_GROUP);
    return true;
  }

  /** Entries a reader took and left idle (it died): this one hands them off. */
  private takeOverStale(): Promise<void> {
    const { consumer, claimIdleMs } = this.s;
    const o = { stream: this.stream, group: RELAY_GROUP, consumer, idleMs: claimIdleMs, page: PAGE };
    return claimStaleEntries(this.d.redis, o, (entries) => this.handOff(entries));
  }

  /**
   * Queues one delivery job per entry, then acknowledges and deletes the entries. An
   * entry whose body cannot be read now (Redis trouble) stays pending and is taken
   * over later; one that is not a notification is dropped with a warning.
   */
  private async handOff(entries: Entry[]): Promise<void> {
    const jobs: { name: string; data: DeliveryJob; opts: JobsOptions }[] = [];
    const done: string[] = [];
    for (const [id, fields] of entries) {
      const n = parseNotification(fields);
      if (!n) {
        this.d.log.warn({ entry: id }, "webhook relay: dropping a stream entry that is not a notification");
        done.push(id);
        continue;
      }
      let event: WebhookEvent | undefined;
      try {
        event = await this.d.describe(n);
      } catch (err) {
        this.d.log.warn({ err: coerceError(err), id: n.id }, "webhook relay: could not read a notification's subject");
        this.retryOwnAt = Date.now() + 1000;
        continue;
      }
      done.push(id);
      if (!event) continue;
      const msgId = messageId(n.kind, n.id, n.type);
      jobs.push({
        name: n.type,
        data: { tenant: n.tenant, type: n.type, msgId, ...(n.url ? { url: n.url } : {}), body: JSON.stringify(event) },
        opts: {
          jobId: msgId,
          attempts: this.s.attempts,
          backoff: { type: "exponential", delay: this.s.backoffMs },
          removeOnComplete: { age: Math.ceil(this.s.keepCompletedMs / 1000) },
          removeOnFail: { age: Math.ceil(this.s.keepFailedMs / 1000) },
          stackTraceLimit: 0,
        },
      });
    }
    if (jobs.length > 0) await this.d.queue.addBulk(jobs);
    if (done.length === 0) return;
    const replies = await this.d.redis
      .multi()
      .xack(this.stream, RELAY_GROUP, ...done)
      .xdel(this.stream, ...done)
      .exec();
    for (const [err] of replies ?? []) if (err) throw err;
  }
}
