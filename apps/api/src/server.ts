import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import os from "node:os";
import { AuditKey, AuditWriter } from "@citadel/audit";
import { readKeyFile } from "@citadel/config";
import { coerceError, type TrustedSigner } from "@citadel/contracts";
import { keyServiceFromEnv, LocalKeyProvider, readTrustedSigners } from "@citadel/keys";
import {
  bullConnection,
  closeRedis,
  JobQueues,
  OutboxRelay,
  type RedisConn,
  redisClient,
  settledWithin,
} from "@citadel/queue";
import { ModelRegistry } from "@citadel/registry";
import { Batches, BatchStore, DenialAggregator, ModelCatalog, RateLimiter, Submitter } from "@citadel/submit";
import { createLogger, createRegistry, type DestinationStream } from "@citadel/telemetry";
import { TenantStore } from "@citadel/tenants";
import type { FastifyInstance } from "fastify";
import { buildApp } from "./app.js";
import type { BoardOptions } from "./board.js";
import { type ApiEnv, BATCH_RUN_GRACE_MS } from "./env.js";
import { parseJsonBody } from "./json-body.js";
import { apiMetrics } from "./metrics.js";
import { startMetricsServer } from "./metrics-server.js";
import { collectQueueGauges } from "./queue-gauges.js";
import { appSettings } from "./settings.js";
import { startWebhooks } from "./webhooks.js";

export interface ApiHandle {
  app: FastifyInstance;
  url: string;
  /** Where /metrics is served: a listener apart from the public API (METRICS_HOST:METRICS_PORT). */
  metricsUrl: string;
  /** The API's queue handles (read by tests and tools; the routes own them). */
  queues: JobQueues;
  close(): Promise<void>;
}

function secret(value: string | undefined, file: string | undefined): string | undefined {
  if (value) return value;
  return file ? readFileSync(file, "utf8").trim() : undefined;
}

/** Composes the producer API from its packages and starts listening. */
export async function startApi(env: ApiEnv, opts: { logDestination?: DestinationStream } = {}): Promise<ApiHandle> {
  const auditKey = AuditKey.adopt(
    env.AUDIT_KEY_FILE ? readKeyFile(env.AUDIT_KEY_FILE) : new LocalKeyProvider(env.LOCAL_KEYRING).auditSecret(),
  );
  const log = createLogger({
    name: "citadel-api",
    level: env.LOG_LEVEL,
    destination: opts.logDestination,
    base: { host: os.hostname() },
  });
  const onRedisError = (err: Error) => log.error({ err }, "redis error");
  // Fail fast while Redis is down (answer 503) instead of queueing commands in memory.
  const redis = redisClient(env, onRedisError, { enableOfflineQueue: false });
  const ready = (c: RedisConn) =>
    new Promise<void>((resolve, reject) => {
      if (c.status === "ready") return resolve();
      c.once("ready", resolve);
      c.once("end", () => reject(new Error("redis connection ended before it was ready")));
    });
  await ready(redis);
  // BullMQ's own commands go over a client without auto-pipelining (its scripts batch already).
  const connection = redisClient(env, onRedisError, {
    enableOfflineQueue: false,
    enableAutoPipelining: false,
  });
  await ready(connection);
  const registry = new ModelRegistry(redis, env.CITADEL_PREFIX);
  // A subscriber cannot run the ready check's INFO once subscribed; skip it.
  const subscriber = redisClient(env, onRedisError, { maxRetriesPerRequest: null, enableReadyCheck: false });
  const metricsRegistry = createRegistry("api");
  const metrics = apiMetrics(metricsRegistry);
  const audit = new AuditWriter(
    redis,
    env.CITADEL_PREFIX,
    `api:${os.hostname()}:${process.pid}`,
    log,
    auditKey,
    env.AUDIT_MAX_LEN,
  );
  const denials = new DenialAggregator(audit, {
    windowMs: env.AUDIT_DENIAL_WINDOW_MS,
    maxSources: env.AUDIT_DENIAL_MAX_SOURCES,
  });

  // The API checks manifest signatures too: it validates inputs against manifests it trusts.
  let trusted: TrustedSigner[];
  const dev = !env.TRUSTED_SIGNERS && env.KEY_PROVIDER === "local";
  const devKeys = dev ? await keyServiceFromEnv(env, log) : null;
  const loadTrusted = async () => {
    trusted = env.TRUSTED_SIGNERS ? readTrustedSigners(env.TRUSTED_SIGNERS) : ((await devKeys?.publicKeys()) ?? []);
  };
  await loadTrusted();
  const catalog = new ModelCatalog(registry, () => trusted, log);
  await catalog.refresh();
  // Job lookups only for models in the registry: an id naming another model creates nothing.
  const queues = new JobQueues(
    connection,
    () => bullConnection(env, onRedisError),
    redis,
    {
      prefix: env.CITADEL_PREFIX,
      resultTtlMs: env.RESULT_TTL_MS,
      failedTtlMs: env.FAILED_TTL_MS,
      attempts: env.JOB_ATTEMPTS,
      backoffMs: env.JOB_BACKOFF_MS,
    },
    (model) => catalog.models().includes(model),
  );
  const consumer = `api:${os.hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`;
  // Quota shares, batch lines and notifications of jobs that ended, from their queues' outboxes.
  // A model whose events this API follows (someone waits on its jobs) has its outbox read
  // when a job's final event comes, not polled.
  const outbox = new OutboxRelay(
    redis,
    { prefix: env.CITADEL_PREFIX, consumer, claimIdleMs: 10_000, idleMaxMs: 100, followed: (m) => queues.follows(m) },
    log,
  );
  queues.onFinalEvent((model) => outbox.nudge(model));
  outbox.setModels(catalog.models());
  outbox.start();
  await subscriber.subscribe(registry.channel);
  const refresh = () => {
    void loadTrusted()
      .then(() => catalog.refresh())
      .then(() => {
        outbox.setModels(catalog.models());
        return queues.retain(catalog.models());
      })
      .catch((err: unknown) => log.error({ err: coerceError(err) }, "registry refresh failed"));
  };
  subscriber.on("message", () => {
    catalog.invalidate();
    refresh();
  });
  // Pub/sub drops messages sent while a subscriber reconnects: re-read the registry now and then.
  const resync = setInterval(refresh, 5000);
  resync.unref();

  const tenants = new TenantStore(redis, env.CITADEL_PREFIX);
  const limiter = new RateLimiter(redis, env.CITADEL_PREFIX);
  const batchStore = new BatchStore(redis, {
    prefix: env.CITADEL_PREFIX,
    ttlMs: env.BATCH_TTL_MS,
    queueTtlMs: env.QUEUE_TTL_MS,
    runGraceMs: BATCH_RUN_GRACE_MS,
  });
  const webhooks = startWebhooks(env, {
    redis,
    queues,
    batchStore,
    tenants,
    log,
    deliveries: metrics.webhookDeliveries,
    onRedisError,
    consumer,
  });
  const callbacks = webhooks.policy;
  const submitter = new Submitter(
    { redis, queues, catalog, limiter, audit, denials, metrics, log, callbacks },
    {
      prefix: env.CITADEL_PREFIX,
      queueTtlMs: env.QUEUE_TTL_MS,
      maxQueueDepth: env.MAX_QUEUE_DEPTH,
      maxTenantQueuedBytes: env.MAX_TENANT_QUEUED_BYTES,
      idempotencyTtlMs: 24 * 3600 * 1000,
      enqueueTimeoutMs: 5000,
      minJobTimeoutMs: env.MIN_JOB_TIMEOUT_MS,
      retentionMs: Math.min(env.RESULT_TTL_MS, env.FAILED_TTL_MS),
    },
  );
  const batches = new Batches(
    {
      submitter,
      store: batchStore,
      queues,
      audit,
      log,
      parseLine: (b) => parseJsonBody(b, env.MAX_JSON_DEPTH),
      callbacks,
    },
    {
      maxBytes: env.BATCH_MAX_BYTES,
      // A line is one job: bounded as a POST /v1/jobs body is.
      maxLineBytes: env.BODY_LIMIT_BYTES,
      maxLines: env.BATCH_MAX_LINES,
      chunkLines: Math.min(64, env.BULK_MAX_JOBS),
    },
  );
  const adminPassword = secret(env.BOARD_ADMIN_PASSWORD, env.BOARD_ADMIN_PASSWORD_FILE);
  const opsPassword = secret(env.BOARD_OPS_PASSWORD, env.BOARD_OPS_PASSWORD_FILE);
  const board: BoardOptions | undefined = adminPassword
    ? {
        admin: { user: env.BOARD_ADMIN_USER, password: adminPassword },
        login: { rate: env.BOARD_LOGIN_PER_MINUTE / 60, burst: env.BOARD_LOGIN_BURST },
        ...(opsPassword ? { ops: { user: env.BOARD_OPS_USER, password: opsPassword } } : {}),
      }
    : undefined;
  if (!board) log.warn("no BOARD_ADMIN_PASSWORD: Bull Board is not mounted");

  const app = await buildApp({
    log,
    redis,
    queues,
    catalog,
    tenants,
    submitter,
    batches,
    batchStore,
    limiter,
    audit,
    denials,
    metrics,
    ...(board ? { board } : {}),
    ...(webhooks.queue ? { webhookQueue: webhooks.queue } : {}),
    settings: appSettings(env),
  });
  app.server.maxConnections = env.MAX_CONNECTIONS;
  const url = await app.listen({ host: env.API_HOST, port: env.API_PORT });
  const metricsServer = await startMetricsServer({
    host: env.METRICS_HOST,
    port: env.METRICS_PORT,
    registry: metricsRegistry,
    collect: () => collectQueueGauges({ redis, prefix: env.CITADEL_PREFIX, catalog, queues, metrics, log }),
    log,
  });
  log.info({ url: url.replace("0.0.0.0", "127.0.0.1"), metricsUrl: metricsServer.url }, "api listening");

  let closing: Promise<void> | undefined;
  return {
    app,
    queues,
    url: url.replace("0.0.0.0", "127.0.0.1").replace("[::]", "127.0.0.1"),
    metricsUrl: metricsServer.url,
    close: () => {
      // Answer long-polls now (a wait still to start returns at once), stop accepting,
      // let in-flight requests finish (app.close waits), then close Redis.
      closing ??= (async () => {
        clearInterval(resync);
        queues.endWaits();
        await app.close();
        await metricsServer.close();
        // Enqueues whose outcome was unknown settle (accepted, or their reservations given back).
        await submitter.drain(10_000);
        // Deliveries in flight finish (each bounded by WEBHOOK_TIMEOUT_MS); unread notifications wait in Redis.
        await webhooks.close();
        await settledWithin(5000, [outbox.close()]);
        await queues.close();
        // The denial window's pending counts become records before the audit writer flushes.
        denials.close();
        await audit.close();
        await devKeys?.close();
        for (const r of [subscriber, connection, redis] as RedisConn[]) {
          try {
            await closeRedis(r);
          } catch (err) {
            log.warn({ err: coerceError(err) }, "redis quit failed");
          }
        }
        log.flush();
      })();
      return closing;
    },
  };
}
