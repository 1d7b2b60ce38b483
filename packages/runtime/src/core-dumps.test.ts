import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { type CoreDumpResult, readCoreDumpState, requireNoCoreDumps } from "./core-dumps.js";

const MODULE = fileURLToPath(new URL("./core-dumps.ts", import.meta.url));
const PACKAGE_DIR = fileURLToPath(new URL("..", import.meta.url));
const children: ChildProcess[] = [];

afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});

interface ChildReport {
  before: ReturnType<typeof readCoreDumpState>;
  result?: CoreDumpResult;
  error?: { name: string; code?: string; message: string };
  warned?: string[];
}

/**
 * A separate Node process whose soft core limit is first raised to its hard limit (so
 * there is something to lower), which reports its own state, runs `call` and then
 * stays alive so the test reads its /proc entries from outside.
 */
async function child(call: string, env: NodeJS.ProcessEnv = {}): Promise<{ pid: number; report: ChildReport }> {
  const script = `
    import { readCoreDumpState, disableCoreDumps, requireNoCoreDumps } from ${JSON.stringify(MODULE)};
    const report = { before: readCoreDumpState() };
    try { ${call} } catch (err) { report.error = { name: err.name, code: err.code, message: err.message }; }
    process.stdout.write(JSON.stringify(report) + "\\n");
    setInterval(() => undefined, 60_000);
  `;
  const c = spawn(
    "/bin/sh",
    [
      "-c",
      'ulimit -S -c "$(ulimit -H -c)" && exec "$0" "$@"',
      process.execPath,
      "--conditions=@citadel/source",
      "--import",
      "tsx",
      "--input-type=module",
      "-e",
      script,
    ],
    { cwd: PACKAGE_DIR, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] },
  );
  children.push(c);
  let out = "";
  let err = "";
  c.stdout?.on("data", (d: Buffer) => {
    out += d.toString("utf8");
  });
  c.stderr?.on("data", (d: Buffer) => {
    err += d.toString("utf8");
  });
  const exited = once(c, "exit").then(() => {
    throw new Error(`child exited before reporting: ${err}`);
  });
  const line = new Promise<string>((resolve) => {
    c.stdout?.on("data", () => {
      const nl = out.indexOf("\n");
      if (nl >= 0) resolve(out.slice(0, nl));
    });
  });
  const first = await Promise.race([line, exited]);
  if (c.pid === undefined) throw new Error("child has no pid");
  return { pid: c.pid, report: JSON.parse(first) as ChildReport };
}

describe("disableCoreDumps", () => {
  it("sets the process's own RLIMIT_CORE to 0:0 and coredump_filter to 0, seen from outside", async () => {
    const { pid, report } = await child("report.result = disableCoreDumps();");
    // The child started with core dumps possible, so the check below can fail.
    expect(report.before.limits?.soft, "soft core limit before").not.toBe("0");
    expect(report.before.filter, "coredump_filter before").not.toBe(0);
    expect(report.result?.disabled).toBe(true);
    expect(report.result?.problems).toEqual([]);
    const after = readCoreDumpState(pid);
    expect(after.limits).toEqual({ soft: "0", hard: "0" });
    expect(after.filter).toBe(0);
  });

  it("reports why when prlimit is missing, and leaves the limit as it was", async () => {
    const { pid, report } = await child('report.result = disableCoreDumps({ prlimit: "/nonexistent/prlimit" });');
    expect(report.result?.disabled).toBe(false);
    expect(report.result?.problems.join("\n")).toMatch(/prlimit --core=0:0 failed/);
    expect(report.result?.problems.join("\n")).toMatch(/core size limit is \S+:\S+, not 0:0/);
    expect(readCoreDumpState(pid).limits?.soft).toBe(report.before.limits?.soft);
  });

  it("refuses in production without ALLOW_CORE_DUMPS, with a code", async () => {
    const { report } = await child(
      'requireNoCoreDumps({ production: true, allowCoreDumps: false, warn: () => { throw new Error("warned instead of refusing"); } }, { prlimit: "/nonexistent/prlimit" });',
    );
    expect(report.error?.name).toBe("CoreDumpsEnabledError");
    expect(report.error?.code).toBe("CORE_DUMPS_ENABLED");
    expect(report.error?.message).toMatch(/ALLOW_CORE_DUMPS=true/);
  });

  it("only warns in production with ALLOW_CORE_DUMPS=true, and in development", async () => {
    for (const production of [true, false]) {
      const { report } = await child(
        `report.warned = []; report.result = requireNoCoreDumps({ production: ${production}, allowCoreDumps: ${production}, warn: (p, m) => report.warned.push(m) }, { prlimit: "/nonexistent/prlimit" });`,
      );
      expect(report.error, `production=${production}`).toBeUndefined();
      expect(report.result?.disabled).toBe(false);
      expect(report.warned?.length, `production=${production}`).toBe(1);
      expect(report.warned?.[0]).toMatch(/core dumps could not be disabled/);
    }
  });

  it("passes silently when it works, in production", () => {
    // In this process: the limits only go down, which a test runner never needs.
    const warned: string[] = [];
    const result = requireNoCoreDumps({ production: true, allowCoreDumps: false, warn: (_p, m) => warned.push(m) });
    expect(result.disabled).toBe(true);
    expect(warned).toEqual([]);
    expect(readCoreDumpState().limits).toEqual({ soft: "0", hard: "0" });
  });
});
