import {
  AuditEnv,
  BoolEnv,
  CommonEnv,
  EVEN_WITH_ISSUES,
  IntEnv,
  KeyEnv,
  ListEnv,
  refineAuditEnv,
  refineCommonEnv,
  refineKeyEnv,
  SECOND,
} from "@citadel/config";
import { z } from "zod";

export const WorkerEnv = CommonEnv.extend(KeyEnv.shape)
  .extend(AuditEnv.shape)
  .extend({
    /** Models this worker serves: "*" for every published model. */
    WORKER_MODELS: ListEnv.default(["*"]),
    WORKER_ID: z.string().min(1).max(128).optional(),
    METRICS_HOST: z.string().default("0.0.0.0"),
    METRICS_PORT: IntEnv(0, 65535).default(9464),
    /** Overrides every manifest's provider list (e.g. "cpu" on a CPU node). */
    EXECUTION_PROVIDERS: ListEnv.pipe(z.array(z.enum(["tensorrt", "cuda", "cpu"]))).optional(),
    REQUIRE_GPU: BoolEnv.default(false),
    GPU_DEVICE_ID: IntEnv(0, 64).default(0),
    /** onnxruntime intra-op threads per model (0 = all cores). */
    RUNTIME_THREADS: IntEnv(0, 256).default(0),
    /** Model sessions this worker (one GPU) holds at once; the least recently used idle one is evicted for another. */
    WORKER_MAX_LOADED_MODELS: IntEnv(1, 1024).default(8),
    /** Optional budget on the held models' plaintext bytes, on top of the count. */
    WORKER_MAX_LOADED_BYTES: IntEnv(1, Number.MAX_SAFE_INTEGER).optional(),
    SHUTDOWN_TIMEOUT_MS: IntEnv(1000, 600 * SECOND).default(30 * SECOND),
    LOCK_DURATION_MS: IntEnv(2000, 600 * SECOND).default(15 * SECOND),
    MAX_RESULT_BYTES: IntEnv(1024, 64 * 1024 * 1024).default(4 * 1024 * 1024),
    CIRCUIT_FAILURES: IntEnv(1, 1000).default(5),
    CIRCUIT_COOLDOWN_MS: IntEnv(100, 3600 * SECOND).default(10 * SECOND),
    /** Abandoned (hung) runner threads tolerated before the worker reports unhealthy. */
    MAX_HUNG_RUNNERS: IntEnv(0, 100).default(2),
    /** Entries this process's own audit stream keeps (XADD MAXLEN ~): one stream per writer, so ten hold what one stream of 1,000,000 did. */
    AUDIT_MAX_LEN: IntEnv(1000, 100_000_000).default(100_000),
    /** Start even where core dumps cannot be disabled (refused in production otherwise). */
    ALLOW_CORE_DUMPS: BoolEnv.default(false),
  })
  .superRefine((env, ctx) => {
    refineKeyEnv(env, ctx);
    refineCommonEnv(env, ctx);
    refineAuditEnv(env, ctx);
    if (env.NODE_ENV === "production" && !env.TRUSTED_SIGNERS) {
      ctx.addIssue({
        code: "custom",
        path: ["TRUSTED_SIGNERS"],
        message: "pinned signer keys are required in production",
      });
    }
  }, EVEN_WITH_ISSUES);
export type WorkerEnv = z.infer<typeof WorkerEnv>;
