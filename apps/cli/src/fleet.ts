import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync } from "node:fs";
import net, { type Socket } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { PARENT_FD_ENV, SERVICE_NODE_FLAGS } from "@citadel/config";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

/** How an app is started: its built dist/main.js with plain node, or its TypeScript source through tsx. */
export type AppForm = "dist" | "source";

/** The form this module itself runs in (vitest and tsx load it as .ts; the build as .js). */
export const OWN_FORM: AppForm = import.meta.url.endsWith(".ts") ? "source" : "dist";

/** Node's arguments that start `apps/<app>` in `form`. */
export function appArgs(app: "api" | "worker", form: AppForm = OWN_FORM): string[] {
  if (form === "dist") {
    const main = path.join(repoRoot, "apps", app, "dist", "main.js");
    if (!existsSync(main)) throw new Error(`${main} is missing: run \`pnpm build\` first`);
    return [...SERVICE_NODE_FLAGS, main];
  }
  // The source condition makes workspace packages resolve to src/*.ts; tsx is resolved
  // from here, so the child can run from any working directory.
  return [
    ...SERVICE_NODE_FLAGS,
    "--conditions=@citadel/source",
    "--import",
    import.meta.resolve("tsx"),
    path.join(repoRoot, "apps", app, "src", "main.ts"),
  ];
}

/** Node's arguments that start the `citadel` CLI in `form` (its bin picks dist or source by the condition). */
export function cliArgs(form: AppForm = OWN_FORM): string[] {
  const bin = path.join(repoRoot, "apps", "cli", "bin", "citadel.mjs");
  return form === "source" ? ["--conditions=@citadel/source", bin] : [bin];
}

/** Ports this process has handed out: never given twice, even once released. */
const handedOut = new Set<number>();

/**
 * A port nothing listens on now, for a child to bind. Two calls in a row can get the
 * same port back from the kernel once the first probe has closed (seen in CI: an API
 * and its metrics listener given one port), so a port is handed out once per process.
 */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await probePort();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

function probePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface FleetProcess {
  name: string;
  child: ChildProcess;
  url: string;
  /** SIGTERM, then wait for exit; resolves with the exit code. */
  /** Resolves with the exit code, or the signal's name, when the process ends. */
  exited: Promise<number | string | null>;
  stop(signal?: NodeJS.Signals): Promise<number | string | null>;
}

/**
 * Starts `apps/<app>` as a child process, logging to `logDir/<name>.log`: built or from
 * source as `opts.form` says, by default in the form this module runs in (the demo from
 * the build runs built apps; tests from source run the apps' sources).
 */
export async function startProcess(
  app: "api" | "worker",
  name: string,
  env: Record<string, string>,
  logDir: string,
  readyUrl: string,
  opts: { timeoutMs?: number; cwd?: string; nodeArgs?: string[]; form?: AppForm } = {},
): Promise<FleetProcess> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  mkdirSync(logDir, { recursive: true });
  // The child writes its log file itself: its lines (shutdown ones included) do not
  // pass through us, so they are kept when we die first, and a dead reader cannot
  // fail its writes with EPIPE.
  const log = openSync(path.join(logDir, `${name}.log`), "a", 0o600);
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, [...(opts.nodeArgs ?? []), ...appArgs(app, opts.form)], {
      cwd: opts.cwd ?? repoRoot,
      // Its own process group: a Ctrl-C in the terminal reaches only us, and we stop the
      // child with one SIGTERM (a second signal would force it to exit mid-drain).
      detached: true,
      // fd 3: a pipe we hold and never write. When we die, by any signal, the child
      // reads end-of-file on it and shuts down (stopWithParent in @citadel/config).
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "", ...env, [PARENT_FD_ENV]: "3" },
      stdio: ["ignore", log, log, "pipe"],
    });
  } finally {
    closeSync(log);
  }
  // Our end must not keep us alive; it stays open for as long as we live (or the child does).
  const parentEnd = child.stdio[3] as Socket | null;
  parentEnd?.unref();
  child.once("exit", () => parentEnd?.destroy());
  // The exit code, or the signal's name when a signal ended the process.
  const exited = new Promise<number | string | null>((resolve) =>
    child.once("exit", (code, sig) => resolve(code ?? sig)),
  );
  // If we die without stopping it (an uncaught error), do not leave it running.
  const reap = () => child.exitCode === null && child.kill("SIGKILL");
  process.once("exit", reap);
  void exited.then(() => process.removeListener("exit", reap));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null)
      throw new Error(`${name} exited with code ${child.exitCode} during start-up; see ${logDir}/${name}.log`);
    const ok = await fetch(readyUrl).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`${name} was not ready within ${timeoutMs} ms; see ${logDir}/${name}.log`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    name,
    child,
    url: readyUrl.replace(/\/readyz$/, ""),
    exited,
    stop: async (signal = "SIGTERM") => {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}
