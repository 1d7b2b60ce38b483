import { readFileSync } from "node:fs";
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
