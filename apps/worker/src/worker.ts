import { createServer, type Server } from "node:http";
import os from "node:os";
import { AuditKey, AuditWriter } from "@citadel/audit";
import { readKeyFile } from "@citadel/config";
import { coerceError, type TrustedSigner } from "@citadel/contracts";
import { keyServiceFromEnv, LocalKeyProvider, trustedSignersFromEnv, VaultKeyProvider } from "@citadel/keys";
import { bullConnection, closeRedis, keys as queueKeys, type RedisConn, redisClient } from "@citadel/queue";
import { FsModelStore, ModelRegistry } from "@citadel/registry";
import { ModelRunner } from "@citadel/runtime";
import { ModelConsumer, ModelHost, vaultUpGauge, workerMetrics } from "@citadel/serving";
import { createLogger, createRegistry, type DestinationStream, gauge, type Logger } from "@citadel/telemetry";
import type { WorkerEnv } from "./env.js";

export interface WorkerHandle {
  workerId: string;
  metricsUrl: string;
  /** Graceful stop: no new jobs, in-flight batches finish or return to the queue. */
  close(): Promise<void>;
  healthy(): boolean;
}

/** Composes a worker from its packages. One process per GPU. */
export async function startWorker(
  env: WorkerEnv,
  opts: {
    logDestination?: DestinationStream;
    /** performance.now() when main.ts began (its imports loaded): the "main" start stage. */
    mainMs?: number;
  } = {},
): Promise<WorkerHandle> {
  const workerId = env.WORKER_ID ?? `${os.hostname()}-${process.pid}`;
  const auditKey = AuditKey.adopt(
    env.AUDIT_KEY_FILE ? readKeyFile(env.AUDIT_KEY_FILE) : new LocalKeyProvider(env.LOCAL_KEYRING).auditSecret(),
  );
  const log: Logger = createLogger({
    name: "citadel-worker",
    level: env.LOG_LEVEL,
    destination: opts.logDestination,
    base: { workerId },
  });
  const onRedisError = (err: Error) => log.error({ err }, "redis error");
  const redis = redisClient(env, onRedisError);
  const connection = bullConnection(env, onRedisError);
  // A subscriber cannot run the ready check's INFO once subscribed; skip it.
  const subscriber = redisClient(env, onRedisError, { maxRetriesPerRequest: null, enableReadyCheck: false });
  const registry = new ModelRegistry(redis, env.CITADEL_PREFIX);
  const store = new FsModelStore(env.MODEL_STORE_DIR);
  const metricsRegistry = createRegistry("worker");
  const metrics = workerMetrics(metricsRegistry);
  const audit = new AuditWriter(redis, env.CITADEL_PREFIX, `worker:${workerId}`, log, auditKey, env.AUDIT_MAX_LEN);
  const keys = await keyServiceFromEnv(env, log);
  if (keys instanceof VaultKeyProvider) vaultUpGauge(metricsRegistry, () => keys.reachable());
  let trusted: TrustedSigner[] = await trustedSignersFromEnv(env, keys);

  const host = new ModelHost({
    registry,
    store,
    keys,
    trusted: () => trusted,
    audit,
    metrics,
    log,
    workerId,
    providers: env.EXECUTION_PROVIDERS,
    requireGpu: env.REQUIRE_GPU,
    deviceId: env.GPU_DEVICE_ID,
    threads: env.RUNTIME_THREADS,
    rejectionTtlMs: 30_000,
    bound: {
      maxModels: env.WORKER_MAX_LOADED_MODELS,
      ...(env.WORKER_MAX_LOADED_BYTES === undefined ? {} : { maxBytes: env.WORKER_MAX_LOADED_BYTES }),
    },
  });

  const consumers = new Map<string, ModelConsumer>();
  const serve = (model: string) => {
    if (consumers.has(model)) return;
    if (!env.WORKER_MODELS.includes("*") && !env.WORKER_MODELS.includes(model)) return;
    const c = new ModelConsumer({
      model,
      connection,
      prefix: env.CITADEL_PREFIX,
      host,
      audit,
      metrics,
      log,
      workerId,
      lockDurationMs: env.LOCK_DURATION_MS,
      maxResultBytes: env.MAX_RESULT_BYTES,
      circuit: { failureThreshold: env.CIRCUIT_FAILURES, cooldownMs: env.CIRCUIT_COOLDOWN_MS },
      maxInFlight: 2,
    });
    consumers.set(model, c);
    c.start();
    log.info({ model }, "serving model queue");
  };

  // Registry changes (new models, versions, routing) reach running workers without a restart.
  await subscriber.subscribe(registry.channel, queueKeys.cancelChannel(env.CITADEL_PREFIX));
  subscriber.on("message", (channel, message) => {
    void (async () => {
      if (channel === registry.channel) {
        const { name } = JSON.parse(message) as { name: string };
        host.forgetRejection(name);
        if (env.TRUSTED_SIGNERS === undefined && env.KEY_PROVIDER === "local") trusted = await keys.publicKeys();
        serve(name);
        await host.refresh(name);
      } else {
        for (const c of consumers.values()) c.cancel(message);
      }
    })().catch((err: unknown) => log.error({ err: coerceError(err) }, "registry/cancel event failed"));
  });
  const models = env.WORKER_MODELS.includes("*") ? await registry.models() : env.WORKER_MODELS;
  for (const m of models) serve(m);
  // Pub/sub drops messages sent while a subscriber reconnects: look for new models now and then.
  const resync = setInterval(() => {
    if (!env.WORKER_MODELS.includes("*")) return;
    registry.models().then(
      (all) => {
        for (const m of all) serve(m);
      },
      (err: unknown) => log.warn({ err: coerceError(err) }, "registry resync failed"),
    );
  }, 5000);
  resync.unref();

  const healthy = () => ModelRunner.abandonedAlive <= env.MAX_HUNG_RUNNERS && redis.status === "ready";
  const server: Server = createServer((req, res) => {
    void (async () => {
      if (req.url === "/metrics") {
        metrics.healthy.set(healthy() ? 1 : 0);
        res.writeHead(200, { "content-type": metricsRegistry.contentType });
        res.end(await metricsRegistry.metrics());
      } else if (req.url === "/healthz") {
        // Unhealthy when hung runners pile up: the orchestrator should replace us.
        const ok = ModelRunner.abandonedAlive <= env.MAX_HUNG_RUNNERS;
        res.writeHead(ok ? 200 : 503, { "content-type": "application/json" });
        res.end(JSON.stringify({ ok, hungRunners: ModelRunner.abandonedAlive }));
      } else if (req.url === "/readyz") {
        const ok = healthy();
        res.writeHead(ok ? 200 : 503, { "content-type": "application/json" });
        res.end(JSON.stringify({ ok, models: [...consumers.keys()] }));
      } else {
        res.writeHead(404).end();
      }
    })().catch((err: unknown) => {
      log.error({ err: coerceError(err) }, "metrics endpoint failed");
      res.writeHead(500).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(env.METRICS_PORT, env.METRICS_HOST, resolve));
  const addr = server.address();
  const metricsUrl = `http://127.0.0.1:${typeof addr === "object" && addr ? addr.port : env.METRICS_PORT}`;
  const stagesMs = { ...(opts.mainMs === undefined ? {} : { main: opts.mainMs }), ready: performance.now() };
  startStages(metricsRegistry, stagesMs);
  const startMs = Object.fromEntries(Object.entries(stagesMs).map(([k, ms]) => [k, Math.round(ms * 10) / 10]));
  log.info({ models, metricsUrl, startMs }, "worker started");

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      clearInterval(resync);
      log.info("worker stopping");
      const grace = Math.max(1000, env.SHUTDOWN_TIMEOUT_MS - 2000);
      await Promise.allSettled([...consumers.values()].map((c) => c.close(grace)));
      await host.close();
      await keys.close();
      await audit.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      for (const r of [subscriber, connection, redis] as RedisConn[]) {
        try {
          await closeRedis(r);
        } catch (err) {
          log.warn({ err: coerceError(err) }, "redis quit failed");
        }
      }
      log.info("worker stopped");
      log.flush();
    })();
    return closing;
  };
  return { workerId, metricsUrl, close, healthy };
}

/**
 * The process's start for the cold-start split: when it began (Unix time, ms precision,
 * unlike process_start_time_seconds) and the seconds from then to each stage: `main`
 * (node bootstrap and module loading done), `ready` (Redis connected, registry read,
 * consumers and the metrics listener up). performance.now() counts from the process's
 * start, so the time before main.ts ran is in both.
 */
function startStages(registry: ReturnType<typeof createRegistry>, stagesMs: Record<string, number>): void {
  gauge(registry, "citadel_worker_start_time_seconds", "When this worker process started (Unix time)", []).set(
    performance.timeOrigin / 1000,
  );
  const g = gauge(registry, "citadel_worker_start_seconds", "Seconds from process start to each start-up stage", [
    "stage",
  ]);
  for (const [stage, ms] of Object.entries(stagesMs)) g.set({ stage }, ms / 1000);
}
