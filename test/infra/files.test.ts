import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { arr, at, INFRA, isObj, parseYamlDocs, ROOT, rel, walk } from "./support.js";

const YAML_FILES = [...walk(INFRA, (f) => /\.ya?ml$/.test(f)), path.join(ROOT, "docker-compose.yml")];
const JSON_FILES = walk(INFRA, (f) => f.endsWith(".json"));
// Everything this part of the project writes; infra/vault is checked by its own owner.
const SCANNED = [
  ...walk(INFRA, (f) => !f.includes(`${path.sep}vault${path.sep}`)),
  path.join(ROOT, "docker-compose.yml"),
  path.join(ROOT, ".dockerignore"),
  ...["docs/deployment.md", "docs/capacity.md"].map((f) => path.join(ROOT, f)),
];

const SECRET_PATTERNS: [string, RegExp][] = [
  ["Vault token", /\bhv[sbr]\.[A-Za-z0-9_-]{20,}/],
  ["legacy Vault token", /\bs\.[A-Za-z0-9]{24}\b/],
  ["private key", /-----BEGIN [A-Z ]*PRIVATE KEY-----/],
  ["AWS key", /\bAKIA[0-9A-Z]{16}\b/],
  ["password in a Redis URL", /redis:\/\/[^\s:@/]*:(?!\$)[^\s@$]{4,}@/],
  ["literal requirepass", /^\s*requirepass\s+(?!\$)\S+/m],
  ["literal password assignment", /(PASSWORD|SECRET|TOKEN)\s*[:=]\s*["']?(?![$/]|\s|["']?$)[A-Za-z0-9+/_-]{12,}/],
];

describe("infra files", () => {
  it.each(YAML_FILES.map(rel))("%s parses as YAML", (file) => {
    const docs = parseYamlDocs(readFileSync(path.join(ROOT, file), "utf8"), file);
    expect(docs.length).toBeGreaterThan(0);
  });

  it.each(JSON_FILES.map(rel))("%s parses as JSON", (file) => {
    expect(() => JSON.parse(readFileSync(path.join(ROOT, file), "utf8"))).not.toThrow();
  });

  it("commits no secret values", () => {
    const hits: string[] = [];
    for (const file of SCANNED) {
      let src: string;
      try {
        src = readFileSync(file, "utf8");
      } catch {
        continue;
      }
      for (const [what, re] of SECRET_PATTERNS) {
        const m = re.exec(src);
        if (m) hits.push(`${rel(file)}: ${what}: ${m[0].slice(0, 40)}`);
      }
    }
    expect(hits).toEqual([]);
  });

  it("declares no Kubernetes Secret with data (secrets are created at deploy time)", () => {
    for (const file of YAML_FILES) {
      for (const d of parseYamlDocs(readFileSync(file, "utf8"), rel(file))) {
        if (!isObj(d) || d.kind !== "Secret") continue;
        expect(at(d, "data") ?? at(d, "stringData"), rel(file)).toBeUndefined();
      }
    }
  });

  it("ships the seccomp profile and the Grafana provisioning it references", () => {
    const prov = parseYamlDocs(
      readFileSync(path.join(INFRA, "grafana/provisioning/dashboards/citadel.yml"), "utf8"),
      "",
    );
    expect(at(prov[0], "providers", 0, "options", "path")).toBe("/var/lib/grafana/dashboards");
    expect(arr(walk(path.join(INFRA, "grafana/dashboards"))).length).toBeGreaterThan(0);
    expect(walk(path.join(INFRA, "seccomp")).map(rel)).toContain("infra/seccomp/citadel-node.json");
  });
});

/** The Markdown the project ships: docs/*.md and the README. */
const DOCS = [...walk(path.join(ROOT, "docs"), (f) => f.endsWith(".md")), path.join(ROOT, "README.md")];

/**
 * Repository paths a document names: anything starting with a top-level folder of the
 * repository (`apps/…`, `infra/…`), `{a,b}` alternatives expanded, `:line` suffixes and
 * trailing punctuation dropped. A name inside a longer path or URL does not count.
 */
function pathsNamedIn(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(
    /(?<![\w./@-])(?:apps|packages|infra|test|scripts|docs|clients)\/[\w.@{},*/-]*[\w*}/-]/g,
  )) {
    const braces = /\{([^{}]*)\}/.exec(m[0]);
    const raw = braces ? (braces[1] ?? "").split(",").map((alt) => m[0].replace(braces[0], alt)) : [m[0]];
    out.push(...raw.map((p) => p.replace(/\/$/, "")));
  }
  return out;
}

/** Whether a path exists; `*` matches within one path segment. */
function existsInRepo(rel: string): boolean {
  const segments = rel.split("/");
  const match = (dir: string, i: number): boolean => {
    if (i === segments.length) return true;
    const seg = segments[i] ?? "";
    if (!seg.includes("*")) return existsSync(path.join(dir, seg)) && match(path.join(dir, seg), i + 1);
    if (!existsSync(dir) || !statSync(dir).isDirectory()) return false;
    const re = new RegExp(`^${seg.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")}$`);
    return readdirSync(dir).some((name) => re.test(name) && match(path.join(dir, name), i + 1));
  };
  return match(ROOT, 0);
}

/** Source and document files under a top-level folder (repository-relative), skipping node_modules. */
function sources(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
    const p = `${dir}/${entry.name}`;
    if (entry.isDirectory() && entry.name !== "node_modules" && !entry.name.startsWith(".")) out.push(...sources(p));
    else if (entry.isFile() && /\.(ts|mts|mjs|md|ya?ml|sh|json)$/.test(entry.name)) out.push(p);
  }
  return out;
}

/** Cells of a Markdown table row: `|` splits cells unless escaped, even inside code spans (GFM). */
function cells(row: string): number {
  return row.trim().replace(/\\\|/g, "").split("|").length - 2;
}

describe("docs", () => {
  it.each(DOCS.map(rel))("%s names only repository paths that exist", (file) => {
    const named = pathsNamedIn(readFileSync(path.join(ROOT, file), "utf8"));
    expect(named.filter((p) => !existsInRepo(p))).toEqual([]);
  });

  it("finds the paths a document names (the check above reads something)", () => {
    expect(pathsNamedIn("see `infra/k8s/overlays/{cpu,gpu}`, apps/api/src/app.ts:12 and https://x.io/docs/a.")).toEqual(
      ["infra/k8s/overlays/cpu", "infra/k8s/overlays/gpu", "apps/api/src/app.ts"],
    );
    expect(existsInRepo("packages/*/src/index.ts")).toBe(true);
    expect(existsInRepo("infra/docker/worker-gpu.Dockerfile")).toBe(false);
    expect(DOCS.flatMap((f) => pathsNamedIn(readFileSync(f, "utf8"))).length).toBeGreaterThan(100);
  });

  it.each(DOCS.map(rel))("%s has tables whose rows have as many cells as their header", (file) => {
    const bad: string[] = [];
    let header = -1;
    let fenced = false;
    for (const [i, line] of readFileSync(path.join(ROOT, file), "utf8").split("\n").entries()) {
      if (line.trimStart().startsWith("```")) fenced = !fenced;
      if (fenced || !line.trimStart().startsWith("|")) header = -1;
      else if (header < 0) header = cells(line);
      else if (cells(line) !== header) bad.push(`line ${i + 1}: ${cells(line)} cells, header has ${header}`);
    }
    expect(bad).toEqual([]);
  });

  it("cites the contract in docs/, not a document outside the repository", () => {
    const files = [...["apps", "packages", "docs", "test", "infra", "scripts"].flatMap(sources), "README.md"];
    // Spelled in two parts so this file does not cite it.
    const citation = ["SPEC", "§"].join(" ");
    const cites = files.filter((f) => readFileSync(path.join(ROOT, f), "utf8").includes(citation));
    expect(cites).toEqual([]);
    expect(existsSync(path.join(ROOT, "docs/contract.md"))).toBe(true);
  });

  it("describes every app and package in the README's architecture table", () => {
    const readme = readFileSync(path.join(ROOT, "README.md"), "utf8");
    const arch = readme.slice(readme.indexOf("## Architecture"), readme.indexOf("## Configuration"));
    const rows = new Set([...arch.matchAll(/^\| `((?:apps|packages)\/[\w-]+)`/gm)].map((m) => m[1]));
    const tree = ["apps", "packages"].flatMap((d) =>
      readdirSync(path.join(ROOT, d))
        .filter((n) => statSync(path.join(ROOT, d, n)).isDirectory())
        .map((n) => `${d}/${n}`),
    );
    expect([...rows].sort()).toEqual(tree.sort());
  });
});
