import { BoolEnv } from "@citadel/config";
import { requireNoCoreDumps } from "@citadel/runtime";

/** Verbs that hold plaintext weights or data keys in this process. */
export const PLAINTEXT_VERBS = new Set(["seal", "demo", "rewrap"]);

/**
 * Turns core dumps off before a plaintext-holding verb runs. Where that is impossible:
 * a warning on stderr, or in production a CoreDumpsEnabledError (ALLOW_CORE_DUMPS=true
 * overrides), as for the worker.
 */
export function disableCoreDumpsForCli(env: NodeJS.ProcessEnv = process.env): void {
  requireNoCoreDumps({
    production: env.NODE_ENV === "production",
    allowCoreDumps: BoolEnv.parse(env.ALLOW_CORE_DUMPS ?? "false"),
    warn: (problems, msg) => process.stderr.write(`citadel: warning: ${msg} (${problems.join("; ")})\n`),
  });
}
