import { BoolEnv } from "@citadel/config";
import { requireNoCoreDumps } from "@citadel/runtime";

/**
 * Verbs that hold plaintext weights or key material in this process: sealing, opening
 * or re-wrapping a model (`verify` decrypts the whole artifact), the dev keyring's keys
 * (`keys init`, `keys rotate`), every role's audit keys (`audit verify`, `audit anchor`)
 * and the operator's webhook key (`tenants webhook-secret`). Commander names a
 * subcommand by its own word, so `verify` covers `citadel verify` and `audit verify`.
 */
export const PLAINTEXT_VERBS = new Set([
  "seal",
  "demo",
  "rewrap",
  "verify",
  "init",
  "rotate",
  "anchor",
  "webhook-secret",
]);

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
