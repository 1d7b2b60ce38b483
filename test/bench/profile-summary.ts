/** Top self time of a `--cpu-prof` profile, for the profiling scripts beside the bench. */
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { say } from "./harness.js";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

/**
 * Prints the `top` functions by self time of the main thread's profile (thread 0; one
 * file per thread: CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile) of process `pid`,
 * or of the newest process in `dir` when `pid` is not given.
 */
export function printTopSelfTime(dir: string, pid?: number, top = 40): void {
  const file = readdirSync(dir)
    .filter((f) => /\.0\.\d+\.cpuprofile$/.test(f) && (pid === undefined || f.includes(`.${pid}.0.`)))
    .map((f) => path.join(dir, f))
    .sort()
    .pop();
  if (!file) throw new Error(`no profile written in ${dir}${pid === undefined ? "" : ` by pid ${pid}`}`);
  const prof = JSON.parse(readFileSync(file, "utf8")) as { nodes: ProfileNode[]; samples: number[] };
  const self = new Map<string, number>();
  const total = prof.samples.length;
  for (const n of prof.nodes) {
    const f = n.callFrame;
    const key = `${f.functionName || "(anonymous)"} ${f.url.replace(/^.*node_modules\//, "nm/").replace(/^file:\/\/.*?\/(packages|apps)\//, "$1/")}:${f.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + (n.hitCount ?? 0));
  }
  say(`profile: ${file}: ${total} samples; top self time:`);
  for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top))
    say(`  ${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`);
}

/**
 * Node flags for the profiled processes: NODE_ARGS="…" when set (e.g. --trace-gc, whose
 * lines go to their logs), none with NO_PROFILE=1, else `--cpu-prof` into `dir`.
 */
export function profiledNodeArgs(dir: string): string[] {
  if (process.env.NODE_ARGS) return process.env.NODE_ARGS.split(" ");
  return process.env.NO_PROFILE ? [] : ["--cpu-prof", `--cpu-prof-dir=${dir}`];
}

/**
 * How the profiled apps start: APP_FORM=dist runs the built apps (what ships: no
 * TypeScript loader in the profile; run `pnpm build` first), else from source.
 */
export function profiledNodeOptions(dir: string): { nodeArgs: string[]; form: "dist" | "source" } {
  return { nodeArgs: profiledNodeArgs(dir), form: process.env.APP_FORM === "dist" ? "dist" : "source" };
}
