import { existsSync } from "node:fs";
import { readKeyFile } from "@citadel/config";
import { CitadelError, type WebhookEvent } from "@citadel/contracts";
import { LocalKeyProvider } from "@citadel/keys";
import { bullConnection, type JobQueues, type RedisConn, settledWithin, WEBHOOK_QUEUE } from "@citadel/queue";
import { type BatchStore, type CallbackPolicy, rememberAllowed } from "@citadel/submit";
import type { Counter, Logger } from "@citadel/telemetry";
import type { TenantStore } from "@citadel/tenants";
import {
  type DeliveryJob,
  type Notification,
  NotificationRelay,
  TargetGuard,
  WebhookDelivery,
  WebhookKey,
} from "@citadel/webhooks";
import { Queue } from "bullmq";
import type { WebhookEnv } from "./env.js";

type Env = WebhookEnv & {
  NODE_ENV: string;
  LOCAL_KEYRING: string;
  REDIS_URL: string;
  REDIS_CLUSTER_NODES?: string[] | undefined;
  CITADEL_PREFIX: string;
};

/** What keeps the API from reading its webhook key file, or null (no file given is no problem). */
export function webhookKeyProblem(env: Pick<Env, "WEBHOOK_KEY_FILE">): string | null {
  if (!env.WEBHOOK_KEY_FILE) return null;
  try {
    readKeyFile(env.WEBHOOK_KEY_FILE).fill(0);
    return null;
  } catch (err) {
    return `WEBHOOK_KEY_FILE: ${(err as Error).message}`;
  }
}

/**
 * The webhook key: WEBHOOK_KEY_FILE, or outside production one derived from the dev
 * keyring; none (webhooks off) in production without the file.
 */
export function loadWebhookKey(env: Env, log: Logger): WebhookKey | undefined {
  if (env.WEBHOOK_KEY_FILE) return WebhookKey.adopt(readKeyFile(env.WEBHOOK_KEY_FILE));
  if (env.NODE_ENV !== "production" && existsSync(env.LOCAL_KEYRING))
    return WebhookKey.adopt(new LocalKeyProvider(env.LOCAL_KEYRING).webhookSecret());
  log.warn("no WEBHOOK_KEY_FILE: completion webhooks are off (callbacks are refused, none are sent)");
  return undefined;
}

export interface WebhookDeps {
  redis: RedisConn;
  queues: JobQueues;
  batchStore: BatchStore;
  tenants: TenantStore;
  log: Logger;
  deliveries: Counter<"tenant" | "outcome">;
  onRedisError: (err: Error) => void;
  /** This process's name among the notifiers (unique per process). */
  consumer: string;
}

export interface WebhookRuntime {
  /** What the submit path asks of webhooks. */
  policy: CallbackPolicy;
  /** The delivery queue (for the board), when webhooks are on. */
  queue?: Queue<DeliveryJob>;
  close(): Promise<void>;
}

/** How long the submit path remembers a callback URL the guard allowed (deliveries check again). */
const ALLOWED_URL_TTL_MS = 30_000;

/**
 * Completion webhooks in the API process: the callback policy the submit path applies
 * and, unless WEBHOOK_NOTIFIER is off, the notifier — the relay from the notifications
 * stream to the delivery queue, and the delivery worker. Every replica may run one.
 */
export function startWebhooks(env: Env, d: WebhookDeps): WebhookRuntime {
  const guard = new TargetGuard(env.WEBHOOK_ALLOW_HOSTS, { ports: env.WEBHOOK_PORTS });
  const key = loadWebhookKey(env, d.log);
  const policy: CallbackPolicy = {
    enabled: key !== undefined,
    check: rememberAllowed((url) => guard.check(url), ALLOWED_URL_TTL_MS),
  };
  if (!key) return { policy, close: async () => {} };
  const connection = bullConnection(env, d.onRedisError);
  const queue = new Queue<DeliveryJob>(WEBHOOK_QUEUE, { connection, prefix: env.CITADEL_PREFIX });
  if (!env.WEBHOOK_NOTIFIER) {
    return {
      policy,
      queue,
      close: async () => {
        await queue.close();
        connection.disconnect();
      },
    };
  }
  const relay = new NotificationRelay(
    {
      redis: d.redis,
      blocking: bullConnection(env, d.onRedisError),
      queue,
      describe: (n) => describe(n, d),
      log: d.log,
    },
    {
      prefix: env.CITADEL_PREFIX,
      consumer: d.consumer,
      attempts: env.WEBHOOK_ATTEMPTS,
      backoffMs: env.WEBHOOK_BACKOFF_MS,
      // A day: a notification read twice within it (a relay that died before acknowledging) is one delivery.
      keepCompletedMs: 24 * 3600 * 1000,
      keepFailedMs: env.WEBHOOK_FAILED_TTL_MS,
      blockMs: 5000,
      claimIdleMs: 60_000,
    },
  );
  const deliveryConnection = bullConnection(env, d.onRedisError);
  const delivery = new WebhookDelivery(
    {
      connection: deliveryConnection,
      prefix: env.CITADEL_PREFIX,
      tenants: d.tenants,
      key,
      guard,
      log: d.log,
      deliveries: d.deliveries,
    },
    {
      concurrency: env.WEBHOOK_CONCURRENCY,
      perTenant: env.WEBHOOK_TENANT_CONCURRENCY,
      timeoutMs: env.WEBHOOK_TIMEOUT_MS,
      maxResponseBytes: 64 * 1024,
    },
  );
  relay.start();
  return {
    policy,
    queue,
    close: async () => {
      // Each bounded: after a Redis Cluster outage a close may wait on a read that never returns.
      await settledWithin(5000, [relay.close()]);
      await settledWithin(env.WEBHOOK_TIMEOUT_MS + 2000, [delivery.close()]);
      await settledWithin(2000, [queue.close()]);
      for (const c of [connection, deliveryConnection]) c.disconnect();
    },
  };
}

/**
 * A notification's body: the job's view without its result, or the batch's view, read
 * as they are now. A job already gone is described by what the notification holds; a
 * batch already gone (past its retention) is not notified.
 */
async function describe(n: Notification, d: WebhookDeps): Promise<WebhookEvent | undefined> {
  const timestamp = new Date(n.at).toISOString();
  if (n.kind === "batch") {
    try {
      return { type: n.type, timestamp, data: await d.batchStore.view(n.tenant, n.id) };
    } catch (err) {
      if (err instanceof CitadelError && err.code === "BATCH_NOT_FOUND") {
        d.log.warn(
          { batch: n.id, tenant: n.tenant },
          "webhook relay: the batch is gone; its completion is not notified",
        );
        return undefined;
      }
      throw err;
    }
  }
  try {
    const { result: _r, ...view } = await d.queues.view(n.id, n.tenant);
    return { type: n.type, timestamp, data: { object: "job", ...view } };
  } catch (err) {
    if (!(err instanceof CitadelError && err.code === "JOB_NOT_FOUND")) throw err;
    const status = n.type === "job.completed" ? "completed" : n.type === "job.failed" ? "failed" : "cancelled";
    return {
      type: n.type,
      timestamp,
      data: { object: "job", id: n.id, status, model: n.id.slice(0, n.id.indexOf(".")), finishedAt: timestamp },
    };
  }
}
