import { CitadelError, coerceError } from "@citadel/contracts";
import { type RedisConn, WEBHOOK_QUEUE } from "@citadel/queue";
import type { Counter, Logger } from "@citadel/telemetry";
import type { Tenant } from "@citadel/tenants";
import { DelayedError, type Job, UnrecoverableError, Worker } from "bullmq";
import type { WebhookKey } from "./key.js";
import { type PostLimits, postJson } from "./post.js";
import type { DeliveryJob } from "./record.js";
import { webhookHeaders } from "./sign.js";
import type { Target, TargetGuard } from "./target.js";

/** What one delivery came to (the deliveries counter's `outcome`; `deferred`: it waited for its tenant's share). */
export type DeliveryOutcome = "delivered" | "retrying" | "failed" | "refused" | "skipped" | "deferred";

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
  /** Deliveries of one tenant in flight at once in this process (its share of `concurrency`). */
  perTenant: number;
  /** How long a delivery waits when its tenant's share is taken; doubled while the tenant's receiver does not answer 2xx, to `maxDeferMs`. */
  deferMs?: number;
  maxDeferMs?: number;
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
  /** Deliveries in flight per tenant. */
  private readonly inFlight = new Map<string, number>();
  /** Per tenant, how many deliveries waited for its share since its receiver last answered 2xx. */
  private readonly deferrals = new Map<string, number>();

  constructor(
    private readonly d: DeliveryDeps,
    private readonly s: DeliverySettings,
  ) {
    this.post = d.post ?? postJson;
    this.worker = new Worker<DeliveryJob, DeliveryResult>(WEBHOOK_QUEUE, (job, token) => this.admit(job, token), {
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

  /**
   * Delivers within the tenant's share: one tenant whose receiver hangs (10 s an
   * attempt, for every notification it makes) holds at most `perTenant` of the slots,
   * and its other deliveries wait (moved back to the delayed set, no attempt spent) while
   * other tenants' go out. The wait doubles while that tenant's receiver answers no 2xx,
   * so a long backlog is not picked up again and again.
   */
  private async admit(job: Job<DeliveryJob, DeliveryResult>, token: string | undefined): Promise<DeliveryResult> {
    const tenant = job.data.tenant;
    const n = this.inFlight.get(tenant) ?? 0;
    if (n >= Math.min(this.s.perTenant, this.s.concurrency) && token) {
      const k = this.deferrals.get(tenant) ?? 0;
      this.deferrals.set(tenant, k + 1);
      const wait = Math.min(this.s.maxDeferMs ?? 60_000, (this.s.deferMs ?? 1000) * 2 ** Math.min(k, 20));
      await job.moveToDelayed(Date.now() + wait * (0.75 + Math.random() / 2), token);
      this.d.deliveries.inc({ tenant, outcome: "deferred" });
      throw new DelayedError();
    }
    this.inFlight.set(tenant, n + 1);
    try {
      const r = await this.deliver(job);
      this.deferrals.delete(tenant);
      return r;
    } finally {
      const left = (this.inFlight.get(tenant) ?? 1) - 1;
      if (left > 0) this.inFlight.set(tenant, left);
      else this.inFlight.delete(tenant);
    }
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
