import { CitadelError, coerceError } from "@citadel/contracts";
import { type RedisConn, WEBHOOK_QUEUE } from "@citadel/queue";
import type { Counter, Logger } from "@citadel/telemetry";
import type { Tenant } from "@citadel/tenants";
import { type Job, UnrecoverableError, Worker } from "bullmq";
import type { WebhookKey } from "./key.js";
import { type PostLimits, postJson } from "./post.js";
import type { DeliveryJob } from "./record.js";
import { webhookHeaders } from "./sign.js";
import type { Target, TargetGuard } from "./target.js";

/** What one delivery came to (the deliveries counter's `outcome`). */
export type DeliveryOutcome = "delivered" | "retrying" | "failed" | "refused" | "skipped";

export interface DeliveryDeps {
  /** BullMQ's connection (maxRetriesPerRequest: null). */
  connection: RedisConn;
  prefix: string;
  tenants: { get(id: string): Promise<Tenant | null> };
  key: WebhookKey;
  guard: TargetGuard;
  log: Logger;
  deliveries: Counter<"tenant" | "outcome">;
  /** The POST itself (tests give their own). */
  post?: typeof postJson;
}

export interface DeliverySettings extends PostLimits {
  /** Deliveries in flight at once in this process. */
  concurrency: number;
}

/** What a delivery job answers when it completes (shown on the board). */
export interface DeliveryResult {
  status?: number;
  skipped?: string;
}

/**
 * Delivers webhooks: a BullMQ worker on the `webhooks` queue. Each attempt reads the
 * tenant (its current callback URL, rights and secret generation), checks the target
 * again (the SSRF guard: an address that changed since registration is refused),
 * signs the body as Standard Webhooks says with a fresh timestamp and the same
 * webhook-id, and POSTs it to the checked address. A 2xx answer completes the job;
 * anything else (another status, a network failure, the time bound) fails the attempt
 * and BullMQ retries it with exponential backoff until its attempts run out; a refused
 * target or a right taken away fails it at once. A job that fails for good stays in the
 * queue's failed set (the board shows it) and is counted.
 */
export class WebhookDelivery {
  private readonly worker: Worker<DeliveryJob, DeliveryResult>;
  private readonly post: typeof postJson;

  constructor(
    private readonly d: DeliveryDeps,
    private readonly s: DeliverySettings,
  ) {
    this.post = d.post ?? postJson;
    this.worker = new Worker<DeliveryJob, DeliveryResult>(WEBHOOK_QUEUE, (job) => this.deliver(job), {
      connection: d.connection,
      prefix: d.prefix,
      concurrency: s.concurrency,
      autorun: true,
    });
    this.worker.on("error", (err) => d.log.error({ err }, "webhook delivery worker error"));
    this.worker.on("completed", (job, r) => {
      d.deliveries.inc({ tenant: job.data.tenant, outcome: r.skipped ? "skipped" : "delivered" });
    });
    this.worker.on("failed", (job, err) => {
      if (!job) return;
      const final = err.name === "UnrecoverableError" || job.attemptsMade >= (job.opts.attempts ?? 1);
      const outcome: DeliveryOutcome = !final ? "retrying" : err.name === "UnrecoverableError" ? "refused" : "failed";
      d.deliveries.inc({ tenant: job.data.tenant, outcome });
      if (final) {
        d.log.warn(
          {
            tenant: job.data.tenant,
            msgId: job.data.msgId,
            type: job.data.type,
            attempts: job.attemptsMade,
            reason: err.message,
          },
          "webhook not delivered",
        );
      }
    });
  }

  private async deliver(job: Job<DeliveryJob, DeliveryResult>): Promise<DeliveryResult> {
    const { tenant: tenantId, url: named, msgId, body } = job.data;
    const tenant = await this.d.tenants.get(tenantId);
    if (!tenant) throw new UnrecoverableError(`no tenant '${tenantId}' any more`);
    if (named && !tenant.allowRequestCallbacks)
      throw new UnrecoverableError("CALLBACK_NOT_ALLOWED: the tenant may no longer name callback URLs");
    const url = named ?? tenant.callbackUrl;
    if (!url) return { skipped: "the tenant has no callback URL any more" };
    let target: Target;
    try {
      target = await this.d.guard.check(url);
    } catch (err) {
      if (err instanceof CitadelError) throw new UnrecoverableError(`${err.code}: ${err.message}`);
      throw err;
    }
    const now = Date.now();
    const headers = webhookHeaders(msgId, Math.floor(now / 1000), body, this.d.key.signingSecrets(tenant, now));
    let status: number;
    try {
      ({ status } = await this.post(target, headers, body, this.s));
    } catch (err) {
      // The origin only: a path or query may carry the receiver's own token.
      throw new Error(`${target.url.origin}: ${coerceError(err).message}`);
    }
    if (status >= 200 && status < 300) return { status };
    throw new Error(`${target.url.origin} answered HTTP ${status}`);
  }

  /** Stops taking deliveries; waits for those in flight (each bounded by the attempt's time limit). */
  async close(): Promise<void> {
    await this.worker.close();
  }
}
