#!/usr/bin/env node
// Set-up behind the README's two commands, in plain Node (it runs before any
// dependency exists): pnpm through npx (no global install; corepack is not used),
// dependencies (skipping onnxruntime-node's CUDA download), the build (tsc -b: every
// package's dist/) and a Redis. Then it runs the demo (built JavaScript, as production
// runs it), the test suite, the benchmark or the reliability suite (the last two from
// TypeScript source through tsx), or the `citadel` CLI (from source: no build, no Redis).
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { findOrStartRedis } from "./redis.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const PNPM_VERSION = "10.34.9";
// pnpm lives in a project-local tool folder (turbo needs a pnpm binary on PATH).
const tools = path.join(root, ".citadel", "tools");
const env = {
  ...process.env,
  PATH: `${path.join(tools, "node_modules", ".bin")}${path.delimiter}${process.env.PATH ?? ""}`,
  ONNXRUNTIME_NODE_INSTALL: "skip",
  TURBO_TELEMETRY_DISABLED: "1",
  npm_config_update_notifier: "false",
};
const say = (m) => process.stderr.write(`» ${m}\n`);
// The CLI's stdout is its answer (JSON, results): set-up output goes to stderr then.
let setupStdio = "inherit";

function run(cmd, args, extraEnv = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: setupStdio, env: { ...env, ...extraEnv } });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

const pnpm = (args, extraEnv) => run("pnpm", args, extraEnv);

function ensurePnpm() {
  const v = spawnSync("pnpm", ["--version"], { env, encoding: "utf8" });
  if (v.status === 0 && v.stdout.trim() === PNPM_VERSION) return;
  say(`installing pnpm ${PNPM_VERSION} into .citadel/tools (no global install)`);
  mkdirSync(tools, { recursive: true });
  if (run("npm", ["install", "--prefix", tools, "--no-save", "--no-package-lock", `pnpm@${PNPM_VERSION}`]) !== 0) {
    throw new Error("could not install pnpm with npm");
  }
}

/** Installs dependencies when the lockfile or a manifest changed since the last install. */
function install() {
  const h = createHash("sha256");
  const manifests = ["package.json", "pnpm-lock.yaml", "pnpm-workspace.yaml"];
  for (const group of ["apps", "packages"]) {
    for (const d of readdirSync(path.join(root, group))) manifests.push(path.join(group, d, "package.json"));
  }
  manifests.push("test/package.json");
  for (const f of manifests) if (existsSync(path.join(root, f))) h.update(readFileSync(path.join(root, f)));
  const stamp = path.join(root, "node_modules", ".citadel-install");
  const digest = h.digest("hex");
  if (existsSync(stamp) && readFileSync(stamp, "utf8") === digest) return;
  say("installing dependencies (pnpm, frozen lockfile; onnxruntime CUDA download skipped)");
  if (pnpm(["install", "--frozen-lockfile", "--reporter=append-only"]) !== 0) throw new Error("pnpm install failed");
  writeFileSync(stamp, digest);
}

/** `pnpm build`: tsc -b (incremental: only what changed) and the runtime assets into dist/. */
function build() {
  say("building (tsc -b tsconfig.build.json, assets into dist/)");
  if (pnpm(["run", "build"]) !== 0) throw new Error("build failed");
}

/** Node's arguments that run a TypeScript entry from source (workspace packages resolve to src/). */
const FROM_SOURCE = ["--conditions=@citadel/source", "--import", "tsx"];

async function withRedis(fn) {
  const redis = await findOrStartRedis({ install: true });
  say(`redis: ${redis.url} (${redis.source})`);
  try {
    return await fn(redis.url);
  } finally {
    await redis.stop();
  }
}

function node(args, extraEnv, cwd = root) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { cwd, stdio: "inherit", env: { ...env, ...extraEnv } });
    const forward = (sig) => child.kill(sig);
    process.on("SIGINT", forward);
    process.on("SIGTERM", forward);
    child.on("exit", (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

/** The board test drives Debian's Chromium (no browser download); install it when we can. */
function ensureChromium() {
  if (process.env.CHROMIUM_PATH || existsSync("/usr/bin/chromium")) return;
  if (process.getuid?.() !== 0 || spawnSync("apt-get", ["--version"], { stdio: "ignore" }).status !== 0) {
    say(
      "chromium: not found and cannot be installed here (needs root + apt-get); set CHROMIUM_PATH or the board test fails",
    );
    return;
  }
  say("chromium: installing Debian's chromium for the board test");
  const aptEnv = { DEBIAN_FRONTEND: "noninteractive" };
  run("apt-get", ["update", "-qq"], aptEnv);
  if (run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", "chromium"], aptEnv) !== 0)
    say("chromium: install failed");
}

/**
 * The alert rules are checked and unit-tested with promtool, from Debian's prometheus
 * package (no download outside apt); without it those tests are skipped, saying why.
 */
function ensurePromtool() {
  if (spawnSync("promtool", ["--version"], { stdio: "ignore" }).status === 0) return;
  if (process.getuid?.() !== 0 || spawnSync("apt-get", ["--version"], { stdio: "ignore" }).status !== 0) {
    say(
      "promtool: not found and cannot be installed here (needs root + apt-get); the promtool rule tests are skipped (apt-get install prometheus)",
    );
    return;
  }
  say("promtool: installing Debian's prometheus for the alert rule tests");
  const aptEnv = { DEBIAN_FRONTEND: "noninteractive" };
  run("apt-get", ["update", "-qq"], aptEnv);
  if (run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", "prometheus"], aptEnv) !== 0)
    say("promtool: install failed; the promtool rule tests are skipped");
}

/**
 * Typecheck, lint, circular imports, the build (the infra tests start the built API),
 * then every test; ends with "N passed, N failed". CITADEL_TEST_SUITE_ONLY=1 skips the
 * static checks (CI's second run of the suite on another Node, after a full first run).
 */
async function test(args) {
  ensureChromium();
  ensurePromtool();
  const suiteOnly = process.env.CITADEL_TEST_SUITE_ONLY === "1";
  if (!suiteOnly) {
    // One TypeScript program over the whole repo (turbo root task): much faster than one per package.
    if (pnpm(["exec", "turbo", "run", "typecheck:all", "--output-logs=errors-only"]) !== 0) return 1;
    if (pnpm(["exec", "biome", "ci", ".", "--colors=off", "--diagnostic-level=error"]) !== 0) return 1;
    if (pnpm(["run", "circular"]) !== 0) return 1;
  }
  build();
  say(`test suite on Node ${process.version}`);
  return withRedis(async (url) => {
    mkdirSync(path.join(root, ".citadel"), { recursive: true });
    const report = path.join(root, ".citadel", "vitest-report.json");
    const code = await node(
      [
        path.join(root, "node_modules", "vitest", "vitest.mjs"),
        "run",
        "--reporter=default",
        "--reporter=json",
        `--outputFile.json=${report}`,
        ...args,
      ],
      { REDIS_URL: url },
    );
    if (existsSync(report)) {
      const r = JSON.parse(readFileSync(report, "utf8"));
      // On a second run (another Node), the line names the Node it ran on.
      const label = suiteOnly ? `node${process.versions.node.split(".")[0]}: ` : "";
      process.stdout.write(
        `\n${label}${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + (r.numTodoTests ?? 0)} skipped\n`,
      );
    }
    return code;
  });
}

const [verb = "test", ...rest] = process.argv.slice(2);
if (verb === "citadel") setupStdio = ["inherit", 2, 2];
try {
  ensurePnpm();
  install();
  let code;
  switch (verb) {
    case "demo":
      // The built CLI (no source condition): it starts the built API and workers.
      build();
      code = await withRedis((url) =>
        node([path.join(root, "apps/cli/bin/citadel.mjs"), "demo", ...rest], { REDIS_URL: url }),
      );
      break;
    case "test":
      code = await test(rest);
      break;
    case "bench":
      code = await withRedis((url) =>
        node([...FROM_SOURCE, path.join(root, "test/bench/bench.ts"), ...rest], { REDIS_URL: url }),
      );
      break;
    case "reliability":
      code = await withRedis((url) =>
        node([...FROM_SOURCE, path.join(root, "test/reliability/run.ts"), ...rest], { REDIS_URL: url }),
      );
      break;
    case "citadel":
      // `npm run citadel -- <args>`: the CLI from its TypeScript source (works before any
      // build), in the directory npm was started from, so relative paths mean what they say.
      code = await node(
        ["--conditions=@citadel/source", path.join(root, "apps/cli/bin/citadel.mjs"), ...rest],
        {},
        process.env.INIT_CWD ?? process.cwd(),
      );
      break;
    default:
      say(`unknown command '${verb}' (demo | test | bench | reliability | citadel)`);
      code = 2;
  }
  process.exit(code);
} catch (err) {
  say(`failed: ${err.message}`);
  process.exit(1);
}
