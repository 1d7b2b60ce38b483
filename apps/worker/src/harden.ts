import { CoreDumpsEnabledError, requireNoCoreDumps } from "@citadel/runtime";
import { createLogger } from "@citadel/telemetry";
import type { WorkerEnv } from "./env.js";

/**
 * Turns core dumps off for this process before any key or model is touched (a dump
 * would hold plaintext weights and unwrapped data keys). Where that is impossible
 * (no /proc, no prlimit): a warning, or in production exit 78 unless ALLOW_CORE_DUMPS.
 */
export function disableCoreDumpsOrExit(env: WorkerEnv): void {
  const log = createLogger({ name: "citadel-worker", level: env.LOG_LEVEL });
  try {
    requireNoCoreDumps({
      production: env.NODE_ENV === "production",
      allowCoreDumps: env.ALLOW_CORE_DUMPS,
      warn: (problems, msg) => log.warn({ problems }, msg),
    });
  } catch (err) {
    if (!(err instanceof CoreDumpsEnabledError)) throw err;
    process.stderr.write(`citadel-worker: ${err.code}: ${err.message}\n`);
    process.exit(78);
  }
}
