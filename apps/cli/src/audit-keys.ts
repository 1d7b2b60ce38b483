import { existsSync } from "node:fs";
import { AuditKey } from "@citadel/audit";
import { readKeyFile } from "@citadel/config";
import { LocalKeyProvider } from "@citadel/keys";
import type { CliEnv } from "./context.js";

/** `path`, or `role=path` (the key then vouches only for writers of that role). */
export function auditKeyFromArg(arg: string): AuditKey {
  const m = /^([a-z][a-z0-9-]{0,31})=(.+)$/.exec(arg);
  const [role, file] = m ? [m[1], m[2] as string] : [undefined, arg];
  return AuditKey.adopt(readKeyFile(file), role);
}

/**
 * The CLI's own audit key (for the records it writes and the anchors it MACs): its
 * AUDIT_KEY_FILE, or outside production the dev keyring's.
 */
export function ownAuditKey(env: CliEnv): AuditKey {
  if (!env.AUDIT_KEY_FILE && env.NODE_ENV === "production")
    throw new Error("AUDIT_KEY_FILE is required in production (a file holding this role's audit key)");
  return AuditKey.adopt(
    env.AUDIT_KEY_FILE ? readKeyFile(env.AUDIT_KEY_FILE) : new LocalKeyProvider(env.LOCAL_KEYRING).auditSecret(),
  );
}

/**
 * Every key a verifier may use: those named on the command line, AUDIT_KEY_FILES, and
 * the CLI's own (its file, or in development the dev keyring's when there is one).
 */
export function verifierKeys(env: CliEnv, args: readonly string[]): AuditKey[] {
  const keys = [...args, ...(env.AUDIT_KEY_FILES ?? [])].map(auditKeyFromArg);
  const hasOwn = env.AUDIT_KEY_FILE || (env.NODE_ENV !== "production" && existsSync(env.LOCAL_KEYRING));
  if (hasOwn) keys.push(ownAuditKey(env));
  if (keys.length === 0)
    throw new Error("no audit keys to verify with: pass --key-file [role=]<file> or set AUDIT_KEY_FILES");
  return keys;
}
