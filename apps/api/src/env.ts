import {
  AuditEnv,
  BoolEnv,
  CommonEnv,
  EVEN_WITH_ISSUES,
  IntEnv,
  KeyEnv,
  MINUTE,
  refineAuditEnv,
  refineCommonEnv,
  refineKeyEnv,
  SECOND,
  WebhookKeyEnv,
} from "@citadel/config";
import { TargetGuard } from "@citadel/webhooks";
import { z } from "zod";

/** Completion webhooks (docs/operations.md "Completion webhooks"). */
export const WebhookEnv = WebhookKeyEnv.extend({
  /** Run the notifier (notifications stream reader and delivery worker) in this process. */
  WEBHOOK_NOTIFIER: BoolEnv.default(true),
  /** Delivery attempts per notification, and the first retry's delay (doubled each retry, with jitter). */
  WEBHOOK_ATTEMPTS: IntEnv(1, 50).default(10),
  WEBHOOK_BACKOFF_MS: IntEnv(10, 60 * MINUTE).default(10 * SECOND),
  /** One attempt: connect, send and read the answer. */
  WEBHOOK_TIMEOUT_MS: IntEnv(100, 2 * MINUTE).default(10 * SECOND),
  /** Deliveries in flight at once per API process. */
  WEBHOOK_CONCURRENCY: IntEnv(1, 1000).default(16),
  /**
   * Deliveries of one tenant in flight at once per API process (its share of
   * WEBHOOK_CONCURRENCY): a tenant whose receiver hangs cannot hold every slot.
   */
  WEBHOOK_TENANT_CONCURRENCY: IntEnv(1, 1000).default(4),
  /** How long a delivery that failed for good stays in the webhooks queue (the board shows it). */
  WEBHOOK_FAILED_TTL_MS: IntEnv(60 * SECOND, 30 * 24 * 60 * MINUTE).default(7 * 24 * 60 * MINUTE),
});
export type WebhookEnv = z.infer<typeof WebhookEnv>;

export const ApiEnv = CommonEnv.extend(KeyEnv.shape)
  .extend(AuditEnv.shape)
  .extend({
    API_HOST: z.string().default("0.0.0.0"),
    API_PORT: IntEnv(0, 65535).default(8080),
    /**
     * /metrics is served here, not on API_PORT (scraped in-cluster, never published).
     * 9465, next to the worker's 9464, so both run on one host with the defaults.
     */
    METRICS_HOST: z.string().default("0.0.0.0"),
    METRICS_PORT: IntEnv(0, 65535).default(9465),
    /** Request bodies over this are refused with 413 while streaming, before being buffered whole. */
    BODY_LIMIT_BYTES: IntEnv(1024, 256 * 1024 * 1024).default(16 * 1024 * 1024),
    MAX_JSON_DEPTH: IntEnv(4, 256).default(32),
    BULK_MAX_JOBS: IntEnv(1, 10_000).default(500),
    /** A batch file (POST /v1/batches) over this is refused with 413 while it streams. */
    BATCH_MAX_BYTES: IntEnv(1024, 2 * 1024 * 1024 * 1024).default(200 * 1024 * 1024),
    /** Request lines in one batch file (413 past it). */
    BATCH_MAX_LINES: IntEnv(1, 1_000_000).default(50_000),
    /** How long a batch and its results are kept after it is created (longer than QUEUE_TTL_MS). */
    BATCH_TTL_MS: IntEnv(60 * SECOND, 30 * 24 * 60 * MINUTE).default(24 * 60 * MINUTE),
    /** How long an accepted job may wait in the queue before it must not start. */
    QUEUE_TTL_MS: IntEnv(1000, 24 * 60 * MINUTE).default(5 * MINUTE),
    RESULT_TTL_MS: IntEnv(1000, 30 * 24 * 60 * MINUTE).default(60 * MINUTE),
    FAILED_TTL_MS: IntEnv(1000, 30 * 24 * 60 * MINUTE).default(7 * 24 * 60 * MINUTE),
    JOB_ATTEMPTS: IntEnv(1, 20).default(3),
    JOB_BACKOFF_MS: IntEnv(10, 10 * MINUTE).default(500),
    /** Backpressure: queued (waiting + prioritized + delayed) jobs per model before 503. */
    MAX_QUEUE_DEPTH: IntEnv(1, 10_000_000).default(100_000),
    /** Backpressure: queued input bytes per tenant before 503. */
    MAX_TENANT_QUEUED_BYTES: IntEnv(1024, 64 * 1024 * 1024 * 1024).default(1024 * 1024 * 1024),
    /** The smallest timeoutMs a job may ask for (a model whose manifest allows less has that as its floor). */
    MIN_JOB_TIMEOUT_MS: IntEnv(1, 10 * MINUTE).default(100),
    /** Unauthenticated and authenticated requests per IP per second (token bucket). */
    IP_RATE: IntEnv(1, 1_000_000).default(200),
    IP_BURST: IntEnv(1, 1_000_000).default(400),
    MAX_WAIT_MS: IntEnv(0, 10 * MINUTE).default(30 * SECOND),
    REQUEST_TIMEOUT_MS: IntEnv(1000, 10 * MINUTE).default(60 * SECOND),
    MAX_CONNECTIONS: IntEnv(1, 1_000_000).default(10_000),
    MAX_EVENT_LOOP_DELAY_MS: IntEnv(10, 60 * SECOND).default(1000),
    BOARD_ADMIN_USER: z.string().default("admin"),
    BOARD_ADMIN_PASSWORD: z.string().min(12).optional(),
    BOARD_ADMIN_PASSWORD_FILE: z.string().optional(),
    BOARD_OPS_USER: z.string().default("ops"),
    BOARD_OPS_PASSWORD: z.string().min(12).optional(),
    BOARD_OPS_PASSWORD_FILE: z.string().optional(),
    /** Failed board logins per client address: this many at once, then BOARD_LOGIN_PER_MINUTE (429 past it). */
    BOARD_LOGIN_BURST: IntEnv(1, 100_000).default(10),
    BOARD_LOGIN_PER_MINUTE: IntEnv(1, 100_000).default(6),
    /** Trust X-Forwarded-For from this many proxies (0: use the socket address). */
    TRUST_PROXY_HOPS: IntEnv(0, 10).default(0),
    OPENAPI_UI: BoolEnv.default(true),
    /** Entries this process's own audit stream keeps (XADD MAXLEN ~): one stream per writer, so ten hold what one stream of 1,000,000 did. */
    AUDIT_MAX_LEN: IntEnv(1000, 100_000_000).default(100_000),
    /**
     * Auth denials and rate-limit refusals are audited per source (address, tenant,
     * reason) and window: the first at once, the rest as one record with a count.
     */
    AUDIT_DENIAL_WINDOW_MS: IntEnv(100, 10 * MINUTE).default(10 * SECOND),
    /** Sources tracked per window; a flood from more folds into one "many sources" record. */
    AUDIT_DENIAL_MAX_SOURCES: IntEnv(1, 1_000_000).default(100),
    ...WebhookEnv.shape,
    /** GET /v1/jobs/{id}/events: a comment line this often keeps proxies from closing a quiet stream. */
    SSE_HEARTBEAT_MS: IntEnv(100, 10 * MINUTE).default(15 * SECOND),
    /** Event streams one tenant may hold open at once on one API replica (429 past it). */
    SSE_MAX_STREAMS_PER_TENANT: IntEnv(1, 100_000).default(100),
  })
  .superRefine((env, ctx) => {
    // With pinned signers the API never builds a key service: no Vault settings needed.
    if (!env.TRUSTED_SIGNERS) refineKeyEnv(env, ctx);
    refineCommonEnv(env, ctx);
    refineAuditEnv(env, ctx);
    refine(env, ctx);
    if (Array.isArray(env.WEBHOOK_ALLOW_HOSTS)) {
      try {
        new TargetGuard(env.WEBHOOK_ALLOW_HOSTS);
      } catch (err) {
        ctx.addIssue({ code: "custom", path: ["WEBHOOK_ALLOW_HOSTS"], message: (err as Error).message });
      }
    }
  }, EVEN_WITH_ISSUES);
export type ApiEnv = z.infer<typeof ApiEnv>;

/** A batch is complete by its last job's deadline plus this (the longest a started job may still run). */
export const BATCH_RUN_GRACE_MS = 10 * MINUTE;

function refine(
  env: z.infer<typeof CommonEnv> & z.infer<typeof KeyEnv> & { BATCH_TTL_MS: number; QUEUE_TTL_MS: number },
  ctx: z.RefinementCtx,
) {
  // A batch must outlive its jobs' window, or its results could expire before its jobs ran.
  if (env.BATCH_TTL_MS <= env.QUEUE_TTL_MS + BATCH_RUN_GRACE_MS) {
    ctx.addIssue({
      code: "custom",
      path: ["BATCH_TTL_MS"],
      message: `must exceed QUEUE_TTL_MS + ${BATCH_RUN_GRACE_MS / MINUTE} minutes (a batch's completion window)`,
    });
  }
  if (env.NODE_ENV === "production" && !env.TRUSTED_SIGNERS) {
    ctx.addIssue({
      code: "custom",
      path: ["TRUSTED_SIGNERS"],
      message: "pinned signer keys are required in production",
    });
  }
}
