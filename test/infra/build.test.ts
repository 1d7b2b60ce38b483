import { spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { builtinModules } from "node:module";
import path from "node:path";
import { appArgs, type FleetProcess, freePort, repoRoot, startProcess } from "@citadel/cli/fleet";
import { SERVICE_NODE_FLAGS } from "@citadel/config";
import { buildConvNet } from "@citadel/onnx";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { b64, type Loose, startTestFleet, type TestFleet } from "../support/fleet.js";

/**
 * The build as production runs it: `pnpm build` (tsc -b, then scripts/copy-assets.mjs)
 * makes every workspace package's dist/, and the apps start from it with plain `node`:
 * no tsx, no "@citadel/source" condition, runner threads included.
 */

interface Workspace {
  dir: string;
  name: string;
  exports: Record<string, { default: string; "@citadel/source": string }>;
  dependencies: Record<string, string>;
}

const WORKSPACES: Workspace[] = ["apps", "packages"].flatMap((group) =>
  readdirSync(path.join(repoRoot, group)).map((d) => {
    const dir = path.join(group, d);
    const pkg = JSON.parse(readFileSync(path.join(repoRoot, dir, "package.json"), "utf8"));
    return { dir, name: pkg.name, exports: pkg.exports, dependencies: pkg.dependencies ?? {} };
  }),
);

/** Files under `dir` (relative paths), recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)));
}

/** What `pnpm build` runs, with this Node: tsc -b is incremental, so a fresh build costs little. */
function build(): void {
  for (const args of [
    [path.join(repoRoot, "node_modules/typescript/bin/tsc"), "-b", "tsconfig.build.json"],
    [path.join(repoRoot, "scripts/copy-assets.mjs")],
  ]) {
    const r = spawnSync(process.execPath, args, { cwd: repoRoot, encoding: "utf8" });
    expect(r.status, `${args.join(" ")}\n${r.stdout}${r.stderr}`).toBe(0);
  }
}

/** The module specifiers a built file imports: import/export … from, side-effect imports, literal import(). */
function importsOf(js: string): string[] {
  const out: string[] = [];
  for (const re of [
    /^(?:import|export)\s[^;]*?\sfrom\s*["']([^"']+)["']/gm,
    /^import\s*["']([^"']+)["']/gm,
    /\bimport\(\s*["']([^"']+)["']\s*\)/g,
  ])
    for (const m of js.matchAll(re)) if (m[1]) out.push(m[1]);
  return out;
}

/** The package a bare specifier names ("@scope/name/sub" → "@scope/name"). */
function packageOf(spec: string): string {
  const parts = spec.split("/");
  return (spec.startsWith("@") ? parts.slice(0, 2) : parts.slice(0, 1)).join("/");
}

beforeAll(build, 600_000);

describe("pnpm build", () => {
  it.each(WORKSPACES.map((w) => [w.dir, w] as const))("%s: every export's built target exists", (_dir, w) => {
    for (const [sub, target] of Object.entries(w.exports)) {
      expect(target["@citadel/source"], `${w.name} ${sub}`).toMatch(/^\.\/src\/.+\.ts$/);
      expect(existsSync(path.join(repoRoot, w.dir, target.default)), `${w.name} ${sub} → ${target.default}`).toBe(true);
    }
  });

  it("builds each app's entry point", () => {
    for (const app of ["api", "worker", "cli"])
      expect(existsSync(path.join(repoRoot, "apps", app, "dist/main.js"))).toBe(true);
  });

  it("copies every runtime asset (the queue's Lua scripts and includes) into dist, byte for byte", () => {
    const src = path.join(repoRoot, "packages/queue/src");
    const lua = filesUnder(src).filter((f) => f.endsWith(".lua"));
    expect(lua).toContain(path.join("scripts", "includes", "batchNotify.lua"));
    for (const f of lua) {
      const built = path.join(repoRoot, "packages/queue/dist", f);
      expect(existsSync(built), f).toBe(true);
      expect(readFileSync(built, "utf8"), f).toBe(readFileSync(path.join(src, f), "utf8"));
    }
  });

  it("emits no tests and nothing that imports tsx; built code imports only production dependencies", () => {
    const builtins = new Set(builtinModules);
    for (const w of WORKSPACES) {
      const dist = path.join(repoRoot, w.dir, "dist");
      const js = filesUnder(dist).filter((f) => f.endsWith(".js"));
      expect(js.length, w.dir).toBeGreaterThan(0);
      expect(
        js.filter((f) => f.includes(".test.")),
        `${w.dir}: tests in dist`,
      ).toEqual([]);
      for (const f of js) {
        for (const spec of importsOf(readFileSync(path.join(dist, f), "utf8"))) {
          if (spec.startsWith(".") || spec.startsWith("node:") || builtins.has(spec)) continue;
          const pkg = packageOf(spec);
          expect(pkg, `${w.dir}/dist/${f} imports ${spec}`).not.toBe("tsx");
          // `pnpm deploy --prod` installs dependencies only: a devDependency would be missing.
          if (pkg !== w.name) expect(Object.keys(w.dependencies), `${w.dir}/dist/${f} imports ${spec}`).toContain(pkg);
        }
      }
    }
  });
});

describe("the API and a worker from dist, with plain node", () => {
  let fleet: TestFleet;
  const procs: FleetProcess[] = [];
  let apiUrl: string;

  beforeAll(async () => {
    // The fleet in this process only seals and publishes; serving is the built processes'.
    fleet = await startTestFleet({ workers: 0 });
    await fleet.publish(buildConvNet(), { name: "conv", version: "1", spec: {} });
    const apiPort = await freePort();
    const api = await startProcess(
      "api",
      "api",
      {
        ...fleet.env,
        API_HOST: "127.0.0.1",
        API_PORT: String(apiPort),
        // Metrics on a port of their own; any free one (the default would collide across tests).
        METRICS_HOST: "127.0.0.1",
        METRICS_PORT: "0",
        BOARD_ADMIN_PASSWORD: "admin-password-for-tests",
        BOARD_OPS_PASSWORD: "ops-password-for-tests",
      },
      path.join(fleet.dir, "logs"),
      `http://127.0.0.1:${apiPort}/readyz`,
      { form: "dist" },
    );
    procs.push(api);
    apiUrl = api.url;
    const metricsPort = await freePort();
    procs.push(
      await startProcess(
        "worker",
        "worker",
        { ...fleet.env, METRICS_HOST: "127.0.0.1", METRICS_PORT: String(metricsPort), RUNTIME_THREADS: "1" },
        path.join(fleet.dir, "logs"),
        `http://127.0.0.1:${metricsPort}/readyz`,
        { form: "dist" },
      ),
    );
  }, 180_000);

  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()));
    await fleet?.close();
  });

  it("starts each app as `node <service flags> apps/<app>/dist/main.js`: no tsx, no source condition, no NODE_OPTIONS", () => {
    for (const [p, app] of [
      [procs[0], "api"],
      [procs[1], "worker"],
    ] as const) {
      const main = path.join(repoRoot, "apps", app, "dist", "main.js");
      expect(p?.child.spawnargs).toEqual([process.execPath, ...SERVICE_NODE_FLAGS, main]);
      expect(appArgs(app, "dist")).toEqual([...SERVICE_NODE_FLAGS, main]);
    }
    // startProcess gives a child only the env it is handed (and PATH, HOME).
    expect(Object.keys(fleet.env)).not.toContain("NODE_OPTIONS");
  });

  it("answers /healthz and /readyz", async () => {
    for (const probe of ["/healthz", "/readyz"]) expect((await fetch(`${apiUrl}${probe}`)).status, probe).toBe(200);
  });

  it("serves a job end to end: built API, built worker, built runner thread", async () => {
    const x = { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(new Float32Array(3072).fill(0.1)) } };
    const headers = { authorization: `Bearer ${fleet.apiKey}`, "content-type": "application/json" };
    const sub = await fetch(`${apiUrl}/v1/jobs`, {
      method: "POST",
      headers,
      body: JSON.stringify({ model: "conv", inputs: x }),
    });
    const { id } = (await sub.json()) as Loose;
    expect(sub.status).toBe(202);
    let view: Loose;
    do {
      view = await (await fetch(`${apiUrl}/v1/jobs/${id}?wait=10000`, { headers })).json();
    } while (view.status === "queued" || view.status === "active");
    expect(view.status, JSON.stringify(view.error)).toBe("completed");
    expect(Object.keys(view.result.outputs).length).toBeGreaterThan(0);
  });

  it("a production deploy of the API (`pnpm deploy --prod`, as the image builds it) has no tsx and starts with plain node", async () => {
    const dir = path.join(fleet.dir, "deploy", "apps", "api");
    const deploy = spawnSync(
      "pnpm",
      ["--filter", "@citadel/api", "deploy", "--prod", "--legacy", "--prefer-offline", dir],
      {
        cwd: repoRoot,
        encoding: "utf8",
        env: { ...process.env, ONNXRUNTIME_NODE_INSTALL: "skip" },
      },
    );
    expect(deploy.status, `${deploy.error ?? ""}${deploy.stdout}${deploy.stderr}`).toBe(0);
    const installed = readdirSync(path.join(dir, "node_modules", ".pnpm"));
    expect(installed.length).toBeGreaterThan(10);
    // (typescript itself is there: valibot, under @bull-board, takes it as a peer dependency.)
    for (const dev of ["tsx@", "vitest@", "vite@", "@biomejs+", "turbo@"])
      expect(
        installed.filter((d) => d.startsWith(dev)),
        dev,
      ).toEqual([]);
    const port = await freePort();
    const child = spawn(process.execPath, ["dist/main.js"], {
      cwd: dir,
      env: {
        PATH: process.env.PATH ?? "",
        ...fleet.env,
        API_HOST: "127.0.0.1",
        API_PORT: String(port),
        METRICS_HOST: "127.0.0.1",
        METRICS_PORT: "0",
        BOARD_ADMIN_PASSWORD: "admin-password-for-tests",
        BOARD_OPS_PASSWORD: "ops-password-for-tests",
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    const exited = new Promise((r) => child.once("exit", r));
    try {
      const deadline = Date.now() + 60_000;
      let status = 0;
      while (status !== 200 && child.exitCode === null && Date.now() < deadline) {
        status = await fetch(`http://127.0.0.1:${port}/readyz`).then(
          (r) => r.status,
          () => 0,
        );
        if (status !== 200) await new Promise((r) => setTimeout(r, 100));
      }
      expect(status, stderr).toBe(200);
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
    } finally {
      child.kill("SIGTERM");
      await exited;
    }
  }, 180_000);
});
