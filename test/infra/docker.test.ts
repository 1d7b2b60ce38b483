import { SERVICE_NODE_FLAGS } from "@citadel/config";
import { describe, expect, it } from "vitest";
import { roleIds } from "./compose-secrets.js";
import { isPinnedImage, read } from "./support.js";

interface Stage {
  name: string;
  from: string;
  lines: string[];
}

/** Dockerfile stages with line continuations joined and ARG defaults substituted in FROM. */
function parseDockerfile(src: string): Stage[] {
  const joined = src.replace(/\\\n/g, " ").split("\n");
  const args = new Map<string, string>();
  const stages: Stage[] = [];
  for (const raw of joined) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const arg = /^ARG\s+([A-Z0-9_]+)=(\S+)/.exec(line);
    if (arg?.[1] && arg[2] && stages.length === 0) args.set(arg[1], arg[2]);
    const from = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/i.exec(line);
    if (from?.[1]) {
      const image = from[1].replace(/\$\{([A-Z0-9_]+)\}/g, (_m, k: string) => args.get(k) ?? "");
      stages.push({ name: from[2] ?? `#${stages.length}`, from: image, lines: [] });
      continue;
    }
    stages.at(-1)?.lines.push(line);
  }
  return stages;
}

/** The stage and the stages it builds on (FROM <stage>), nearest first. */
function chain(stages: Stage[], name: string): Stage[] {
  const out: Stage[] = [];
  let cur = stages.find((s) => s.name === name);
  while (cur) {
    out.push(cur);
    const parent = cur.from;
    cur = stages.find((s) => s.name === parent);
  }
  return out;
}

const BUILD_TOOLS = /\b(build-essential|gcc|g\+\+|make|cmake|python3-dev|pnpm\s+install|npm\s+(ci|install))\b/;

describe.each([
  ["infra/docker/Dockerfile", ["api", "worker", "tools"]],
  ["infra/docker/Dockerfile.gpu", ["worker-gpu"]],
] as const)("%s", (file, targets) => {
  const stages = parseDockerfile(read(file));

  it("is multi-stage with every base image pinned to a version", () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const names = new Set(stages.map((s) => s.name));
    for (const s of stages) {
      if (names.has(s.from)) continue;
      expect(isPinnedImage(s.from), `${s.name}: FROM ${s.from}`).toBe(true);
    }
  });

  it.each(targets)("target %s: non-root, healthcheck, no build tools", (target) => {
    const c = chain(stages, target);
    expect(c.length, `stage ${target}`).toBeGreaterThan(0);
    const lines = c.flatMap((s) => s.lines);
    const user = [...c]
      .reverse()
      .flatMap((s) => s.lines.filter((l) => l.startsWith("USER ")))
      .at(-1);
    expect(user, `${target} USER`).toMatch(/^USER\s+[1-9]\d*(:[1-9]\d*)?$/);
    expect(
      c.some((s) => s.lines.some((l) => l.startsWith("HEALTHCHECK "))),
      `${target} HEALTHCHECK`,
    ).toBe(true);
    for (const l of lines.filter((x) => x.startsWith("RUN "))) {
      const installs = /apt-get\s+install|apk\s+add/.test(l);
      expect(installs && BUILD_TOOLS.test(l), `${target}: ${l.slice(0, 120)}`).toBe(false);
      expect(
        /pnpm(@[\d.]+)?\s+install|npm\s+(ci|install)/.test(l),
        `${target} installs packages: ${l.slice(0, 80)}`,
      ).toBe(false);
    }
    // the app is copied from the build stage, not built here
    expect(lines.some((l) => /^COPY\s+--from=build\b/.test(l))).toBe(true);
  });

  it("installs with the pinned pnpm and a frozen lockfile in the build stage", () => {
    const build = stages.find((s) => s.name === "build");
    const run = build?.lines.find((l) => l.includes("pnpm@"));
    expect(run).toContain("npx --yes pnpm@10.34.9 install --frozen-lockfile --prod=false");
    expect(build?.lines.some((l) => /ONNXRUNTIME_NODE_INSTALL=skip/.test(l))).toBe(true);
  });
});

const APP_TARGETS: [file: string, targets: [target: string, app: string][]][] = [
  [
    "infra/docker/Dockerfile",
    [
      ["api", "api"],
      ["worker", "worker"],
      ["tools", "cli"],
    ],
  ],
  ["infra/docker/Dockerfile.gpu", [["worker-gpu", "worker"]]],
];

describe.each(APP_TARGETS)("%s: built JavaScript, production dependencies only", (file, targets) => {
  const stages = parseDockerfile(read(file));
  const build = stages.find((s) => s.name === "build");

  it("the build stage compiles and deploys each app with production dependencies only", () => {
    const lines = build?.lines.join("\n") ?? "";
    expect(lines).toContain("COPY tsconfig.base.json tsconfig.json tsconfig.build.json ./");
    expect(lines).toContain("COPY scripts/copy-assets.mjs scripts/");
    expect(lines).toContain("npx --yes pnpm@10.34.9 run build");
    for (const [, app] of targets)
      expect(lines).toContain(`--filter @citadel/${app} deploy --prod --legacy /deploy/apps/${app}`);
    // the build fails if tsx reached a production deploy
    expect(lines).toContain("-path '*/node_modules/tsx'");
  });

  it.each(targets)("target %s copies only its app's deploy and runs node on dist (no tsx)", (target, app) => {
    const c = chain(stages, target);
    const lines = c.flatMap((s) => s.lines);
    expect(lines).toContain(`COPY --from=build --chown=root:root /deploy/apps/${app} /app/apps/${app}`);
    expect(lines.filter((l) => /^COPY --from=build\b/.test(l))).toHaveLength(1);
    expect(lines.filter((l) => /\btsx\b/.test(l))).toEqual([]);
    const start = lines.find((l) => /^(CMD|ENTRYPOINT) \["\/bin\/sh"/.test(l)) ?? "";
    const argv = JSON.parse(start.replace(/^(CMD|ENTRYPOINT)\s+/, "")) as string[];
    expect(argv[2]).toBe(
      app === "cli"
        ? 'ulimit -c 0 && exec node apps/cli/bin/citadel.mjs "$@"'
        : `ulimit -c 0 && exec node ${SERVICE_NODE_FLAGS.join(" ")} apps/${app}/dist/main.js`,
    );
  });
});

describe("Node version", () => {
  it("images run the current LTS line, pinned by digest, the Node 24 release CI runs the suite on", () => {
    const ci = /^NODE24=(\S+)$/m.exec(read(".ci/run"))?.[1];
    expect(ci).toMatch(/^24\.\d+\.\d+$/);
    const images = ["infra/docker/Dockerfile", "infra/docker/Dockerfile.gpu"].map((file) => {
      const image = /^ARG NODE_IMAGE=(\S+)$/m.exec(read(file))?.[1];
      expect(image, file).toMatch(new RegExp(`^node:${ci?.replaceAll(".", "\\.")}-bookworm-slim@sha256:[0-9a-f]{64}$`));
      return image;
    });
    // The GPU worker takes its Node binary from the same image: one release, one digest.
    expect(new Set(images).size).toBe(1);
  });
});

describe("GPU worker image", () => {
  const stages = parseDockerfile(read("infra/docker/Dockerfile.gpu"));

  it("runs on a pinned NVIDIA TensorRT image with ORT's CUDA/TensorRT providers fetched at build", () => {
    const final = stages.find((s) => s.name === "worker-gpu");
    expect(final?.from).toMatch(/^nvcr\.io\/nvidia\/tensorrt:\d{2}\.\d{2}-py3$/);
    const build = stages.find((s) => s.name === "build");
    const install = build?.lines.find((l) => l.includes("ONNXRUNTIME_NODE_INSTALL=cuda12"));
    expect(install).toContain("script/install.js");
    expect(install).toContain("libonnxruntime_providers_");
    for (const lib of ["shared", "cuda", "tensorrt"]) expect(install).toContain(lib);
    // the final image proves the providers resolve their CUDA/TensorRT libraries
    expect(final?.lines.some((l) => l.includes("ldd") && l.includes("libonnxruntime_providers_tensorrt.so"))).toBe(
      true,
    );
    expect(final?.lines.some((l) => /apt-get purge/.test(l))).toBe(true);
  });
});

describe(".dockerignore", () => {
  const ignore = read(".dockerignore")
    .split("\n")
    .map((l) => l.trim());

  it("keeps secrets, VCS data and local state out of the build context", () => {
    for (const p of [
      "**/node_modules",
      ".git",
      ".env",
      ".env.*",
      ".citadel",
      "**/keyring*.json",
      "**/*.pem",
      "**/*.key",
    ]) {
      expect(ignore, p).toContain(p);
    }
  });
});

describe("images: one user per role, no core dumps", () => {
  const ids = roleIds();
  const cases = [
    ["infra/docker/Dockerfile", "api", ids.api],
    ["infra/docker/Dockerfile", "worker", ids.worker],
    ["infra/docker/Dockerfile", "tools", ids.publisher],
    ["infra/docker/Dockerfile.gpu", "worker-gpu", ids.worker],
  ] as const;

  it.each(cases)("%s target %s runs as its role's uid:gid", (file, target, id) => {
    const c = chain(parseDockerfile(read(file)), target);
    const user = [...c]
      .reverse()
      .flatMap((s) => s.lines.filter((l) => l.startsWith("USER ")))
      .at(-1);
    expect(user).toBe(`USER ${id}:${id}`);
  });

  it.each(cases)("%s target %s ships prlimit and starts node under `ulimit -c 0`", (file, target) => {
    const c = chain(parseDockerfile(read(file)), target);
    const lines = c.flatMap((s) => s.lines);
    // The build fails where util-linux's prlimit is missing (the worker needs it).
    expect(lines.some((l) => l.startsWith("RUN ") && /\bprlimit --version\b/.test(l))).toBe(true);
    const start = c.flatMap((s) => s.lines.filter((l) => /^(CMD|ENTRYPOINT) \["\/bin\/sh"/.test(l))).at(0) ?? "";
    const argv = JSON.parse(start.replace(/^(CMD|ENTRYPOINT)\s+/, "")) as string[];
    expect(argv.slice(0, 2)).toEqual(["/bin/sh", "-c"]);
    expect(argv[2]).toMatch(/^ulimit -c 0 && exec node /);
  });

  it("gives compose's bootstrap the secrets mount points it writes (a new volume takes their owner)", () => {
    const tools = chain(parseDockerfile(read("infra/docker/Dockerfile")), "tools").flatMap((s) => s.lines);
    const run = tools.find((l) => l.includes("/secrets")) ?? "";
    expect(run).toContain(`-o ${ids.bootstrap} -g ${ids.bootstrap}`);
    for (const d of ["api", "worker", "publisher", "redis", "grafana", "vault-keys"]) expect(run).toContain(d);
  });
});
