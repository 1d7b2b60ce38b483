import type { AppDeps } from "./app.js";
import type { ApiEnv } from "./env.js";

/** The app's settings from the environment (the routes' limits, and what the OpenAPI document shows of them). */
export function appSettings(env: ApiEnv): AppDeps["settings"] {
  return {
    bodyLimit: env.BODY_LIMIT_BYTES,
    maxJsonDepth: env.MAX_JSON_DEPTH,
    bulkMaxJobs: env.BULK_MAX_JOBS,
    batchMaxBytes: env.BATCH_MAX_BYTES,
    maxWaitMs: env.MAX_WAIT_MS,
    queueTtlMs: env.QUEUE_TTL_MS,
    requestTimeoutMs: env.REQUEST_TIMEOUT_MS,
    maxEventLoopDelayMs: env.MAX_EVENT_LOOP_DELAY_MS,
    ipRate: env.IP_RATE,
    ipBurst: env.IP_BURST,
    trustProxyHops: env.TRUST_PROXY_HOPS,
    openApiUi: env.OPENAPI_UI,
    sseHeartbeatMs: env.SSE_HEARTBEAT_MS,
    sseMaxStreamsPerTenant: env.SSE_MAX_STREAMS_PER_TENANT,
  };
}
