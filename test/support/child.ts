import { type SpawnOptionsWithoutStdio, spawn } from "node:child_process";
import { cliArgs } from "@citadel/cli/fleet";

export interface ChildResult {
  code: number | null;
  out: string;
  err: string;
}

/**
 * Runs a program to its end and collects what it printed. Asynchronous on purpose: the
 * fleet a test's child talks to often lives in the test's own process, which spawnSync
 * would stall.
 */
export function runChild(argv: readonly string[], options: SpawnOptionsWithoutStdio): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0] as string, argv.slice(1), options);
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      err += d.toString();
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, out, err }));
  });
}

/** Runs the `citadel` CLI (from source or dist, as the tests run) with these arguments, asynchronously (see runChild). */
export function runCli(args: readonly string[], options: SpawnOptionsWithoutStdio): Promise<ChildResult> {
  return runChild([process.execPath, ...cliArgs(), ...args], options);
}
