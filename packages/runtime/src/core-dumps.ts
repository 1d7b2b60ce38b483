import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { coerceError } from "@citadel/contracts";

/**
 * Core dumps of a worker (or of the CLI while it seals) would hold plaintext model
 * weights and unwrapped data keys. Node has no setrlimit or prctl, so the process turns
 * them off itself through util-linux's `prlimit` (RLIMIT_CORE 0, soft and hard: a
 * process may lower its own limits without privileges) and /proc/self/coredump_filter
 * (0: no memory mappings in a dump, which also covers a piped core_pattern, where the
 * kernel ignores RLIMIT_CORE), then reads both back from /proc.
 */

export interface CoreDumpLimits {
  /** "Max core file size" from /proc/<pid>/limits: a byte count or "unlimited". */
  soft: string;
  hard: string;
}

export interface CoreDumpState {
  limits: CoreDumpLimits | null;
  /** /proc/<pid>/coredump_filter as a number; null where it cannot be read. */
  filter: number | null;
}

export interface CoreDumpResult {
  /** Both RLIMIT_CORE values and coredump_filter read back as 0. */
  disabled: boolean;
  /** Why not, one line each (no secrets: paths and errno texts only). */
  problems: string[];
  state: CoreDumpState;
}

export interface CoreDumpOptions {
  /** The prlimit binary (default: `prlimit` on PATH). */
  prlimit?: string;
  /** The proc filesystem (default /proc). */
  proc?: string;
  pid?: number;
}

/** Reads a process's core-dump limits and filter; fields are null where /proc lacks them. */
export function readCoreDumpState(pid: number | "self" = "self", proc = "/proc"): CoreDumpState {
  let limits: CoreDumpLimits | null = null;
  let filter: number | null = null;
  try {
    const line = readFileSync(`${proc}/${pid}/limits`, "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max core file size"));
    const [soft, hard] = line?.slice("Max core file size".length).trim().split(/\s+/) ?? [];
    if (soft && hard) limits = { soft, hard };
  } catch {
    // No /proc (not Linux, or masked): the caller reports limits as unknown.
    limits = null;
  }
  try {
    const v = Number.parseInt(readFileSync(`${proc}/${pid}/coredump_filter`, "utf8").trim(), 16);
    filter = Number.isNaN(v) ? null : v;
  } catch {
    filter = null;
  }
  return { limits, filter };
}

/** Sets RLIMIT_CORE to 0:0 and coredump_filter to 0 for this process, then verifies both. */
export function disableCoreDumps(opts: CoreDumpOptions = {}): CoreDumpResult {
  const proc = opts.proc ?? "/proc";
  const pid = opts.pid ?? process.pid;
  const problems: string[] = [];
  try {
    execFileSync(opts.prlimit ?? "prlimit", ["--pid", String(pid), "--core=0:0"], {
      stdio: ["ignore", "ignore", "pipe"],
      timeout: 10_000,
    });
  } catch (err) {
    problems.push(`prlimit --core=0:0 failed: ${firstLine(err)}`);
  }
  try {
    writeFileSync(`${proc}/${pid}/coredump_filter`, "0");
  } catch (err) {
    problems.push(`writing ${proc}/${pid}/coredump_filter failed: ${firstLine(err)}`);
  }
  const state = readCoreDumpState(pid, proc);
  if (!state.limits) problems.push(`${proc}/${pid}/limits has no core-size line`);
  else if (state.limits.soft !== "0" || state.limits.hard !== "0")
    problems.push(`core size limit is ${state.limits.soft}:${state.limits.hard}, not 0:0`);
  if (state.filter === null) problems.push(`${proc}/${pid}/coredump_filter is unreadable`);
  else if (state.filter !== 0) problems.push(`coredump_filter is ${state.filter.toString(16)}, not 0`);
  const disabled = state.limits?.soft === "0" && state.limits.hard === "0" && state.filter === 0;
  return { disabled, problems: disabled ? [] : problems, state };
}

function firstLine(err: unknown): string {
  const e = coerceError(err);
  const stderr = (e as { stderr?: unknown }).stderr;
  const text = stderr instanceof Buffer && stderr.length > 0 ? stderr.toString("utf8") : e.message;
  return text.split("\n")[0] ?? "unknown error";
}

/** Refusal to start with core dumps possible: production without ALLOW_CORE_DUMPS. */
export class CoreDumpsEnabledError extends Error {
  override readonly name = "CoreDumpsEnabledError";
  readonly code = "CORE_DUMPS_ENABLED";
  constructor(readonly problems: string[]) {
    super(
      `core dumps could not be disabled (${problems.join("; ")}); refusing to start in production (set ALLOW_CORE_DUMPS=true to override)`,
    );
  }
}

export interface CoreDumpPolicy {
  production: boolean;
  /** ALLOW_CORE_DUMPS=true: start anyway (with a warning) where they cannot be disabled. */
  allowCoreDumps: boolean;
  warn: (problems: string[], msg: string) => void;
}

/**
 * Disables core dumps, or decides what a failure means: a warning in development or
 * with the explicit override, a CoreDumpsEnabledError in production.
 */
export function requireNoCoreDumps(policy: CoreDumpPolicy, opts: CoreDumpOptions = {}): CoreDumpResult {
  const result = disableCoreDumps(opts);
  if (result.disabled) return result;
  if (policy.production && !policy.allowCoreDumps) throw new CoreDumpsEnabledError(result.problems);
  policy.warn(
    result.problems,
    policy.production
      ? "core dumps could not be disabled; starting anyway because ALLOW_CORE_DUMPS=true: a crash may write plaintext weights and keys to disk"
      : "core dumps could not be disabled: a crash may write plaintext weights and keys to disk (refused in production)",
  );
  return result;
}
