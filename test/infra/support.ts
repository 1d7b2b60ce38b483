import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { expect } from "vitest";
import YAML from "yaml";

/** Helpers for the infra tests: they read files as an operator would, no cluster needed. */

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const INFRA = path.join(ROOT, "infra");
export const MODELS = ["conv-small", "ocr-cls"] as const;

export type Obj = Record<string, unknown>;

export function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Walks a path of keys/indexes; undefined as soon as one is missing. */
export function at(v: unknown, ...keys: (string | number)[]): unknown {
  let cur: unknown = v;
  for (const k of keys) {
    if (typeof k === "number") cur = Array.isArray(cur) ? cur[k] : undefined;
    else cur = isObj(cur) ? cur[k] : undefined;
    if (cur === undefined) return undefined;
  }
  return cur;
}

export function arr(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

export function str(v: unknown): string {
  return typeof v === "string" ? v : "";
}

export function read(rel: string): string {
  return readFileSync(path.join(ROOT, rel), "utf8");
}

export function walk(dir: string, filter: (file: string) => boolean = () => true): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) out.push(...walk(full, filter));
    else if (filter(full)) out.push(full);
  }
  return out.sort();
}

export function rel(file: string): string {
  return path.relative(ROOT, file);
}

/** Every document of a YAML stream; throws on any parse error or warning. */
export function parseYamlDocs(src: string, name: string): unknown[] {
  const docs = YAML.parseAllDocuments(src, { merge: true });
  const out: unknown[] = [];
  for (const d of docs) {
    if (d.errors.length) throw new Error(`${name}: ${d.errors.map((e) => e.message).join("; ")}`);
    const js: unknown = d.toJS({ maxAliasCount: 100 });
    if (js !== null && js !== undefined) out.push(js);
  }
  return out;
}

/** `${VAR:-default}` → default, as compose interpolates with an empty environment. */
export function interpolate(s: string): string {
  return s.replace(/\$\{[A-Z0-9_]+(?::?-([^}]*))?\}/g, (_m, def: string | undefined) => def ?? "");
}

export function loadCompose(): Obj {
  const doc = YAML.parse(read("docker-compose.yml"), { merge: true }) as unknown;
  if (!isObj(doc)) throw new Error("docker-compose.yml is not a mapping");
  return doc;
}

export function which(bin: string): string | null {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    const full = path.join(dir, bin);
    if (dir && existsSync(full)) return full;
  }
  return null;
}

// CITADEL_INFRA_STRUCTURAL=1 exercises the no-kubectl fallback on a machine that has it.
const structural = process.env.CITADEL_INFRA_STRUCTURAL === "1";
export const KUBECTL = structural ? null : which("kubectl");
export const KUSTOMIZE = structural ? null : which("kustomize");
export const RENDERER = KUBECTL ? "kubectl kustomize" : KUSTOMIZE ? "kustomize build" : null;

export interface Rendered {
  docs: Obj[];
  /** true: the real `kustomize` output; false: a structural read of the source files. */
  rendered: boolean;
}

const renderCache = new Map<string, Rendered>();

/**
 * The manifests of an overlay as kustomize renders them. Without kubectl/kustomize,
 * a structural fallback: the base, component and overlay resource files as written
 * (patches are not applied, so overlay-specific checks read the patch files).
 */
export function renderOverlay(overlay: "base" | "cpu" | "gpu"): Rendered {
  const cached = renderCache.get(overlay);
  if (cached) return cached;
  const dir = path.join(INFRA, "k8s", ...(overlay === "base" ? ["base"] : ["overlays", overlay]));
  let result: Rendered;
  if (KUBECTL || KUSTOMIZE) {
    const out = KUBECTL
      ? execFileSync(KUBECTL, ["kustomize", dir], { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 })
      : execFileSync(KUSTOMIZE ?? "kustomize", ["build", dir], { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
    result = { docs: parseYamlDocs(out, `kustomize ${overlay}`).filter(isObj), rendered: true };
  } else {
    result = { docs: structuralRead(dir).filter(isObj), rendered: false };
  }
  renderCache.set(overlay, result);
  return result;
}

function structuralRead(dir: string, seen = new Set<string>()): unknown[] {
  if (seen.has(dir)) return [];
  seen.add(dir);
  const kfile = path.join(dir, "kustomization.yaml");
  const k = YAML.parse(readFileSync(kfile, "utf8")) as unknown;
  const docs: unknown[] = [];
  for (const r of [...arr(at(k, "resources")), ...arr(at(k, "components"))]) {
    const p = path.resolve(dir, str(r));
    if (existsSync(path.join(p, "kustomization.yaml"))) docs.push(...structuralRead(p, seen));
    else docs.push(...parseYamlDocs(readFileSync(p, "utf8"), rel(p)));
  }
  return docs;
}

export const WORKLOAD_KINDS = new Set([
  "Deployment",
  "StatefulSet",
  "DaemonSet",
  "Job",
  "CronJob",
  "ReplicaSet",
  "Pod",
]);

/** The pod spec of a workload object (CronJob → jobTemplate → template). */
export function podSpecOf(o: Obj): Obj | undefined {
  const kind = str(o.kind);
  let spec: unknown;
  if (kind === "Pod") spec = o.spec;
  else if (kind === "CronJob") spec = at(o, "spec", "jobTemplate", "spec", "template", "spec");
  else spec = at(o, "spec", "template", "spec");
  return isObj(spec) ? spec : undefined;
}

export function containersOf(pod: Obj): Obj[] {
  return [...arr(pod.initContainers), ...arr(pod.containers)].filter(isObj);
}

export function workloads(docs: Obj[]): Obj[] {
  return docs.filter((d) => WORKLOAD_KINDS.has(str(d.kind)));
}

export function named(docs: Obj[], kind: string, name: string): Obj | undefined {
  return docs.find((d) => d.kind === kind && at(d, "metadata", "name") === name);
}

export function envValue(container: Obj, name: string): string | undefined {
  const e = arr(container.env).find((x) => at(x, "name") === name);
  const v = at(e, "value");
  return typeof v === "string" ? v : undefined;
}

/** A generated ConfigMap's data, whatever hash suffix kustomize gave its name. */
export function configMapData(docs: Obj[], prefix: string): Record<string, string> {
  const cm = docs.find((d) => d.kind === "ConfigMap" && str(at(d, "metadata", "name")).startsWith(prefix));
  const data = at(cm, "data");
  const out: Record<string, string> = {};
  if (isObj(data)) for (const [k, v] of Object.entries(data)) out[k] = String(v);
  else if (!cm) Object.assign(out, generatedConfigMap(prefix));
  return out;
}

/** Structural fallback: the base kustomization's configMapGenerator entry, unrendered. */
function generatedConfigMap(name: string): Record<string, string> {
  const base = path.join(INFRA, "k8s", "base");
  const k = YAML.parse(readFileSync(path.join(base, "kustomization.yaml"), "utf8")) as unknown;
  const gen = arr(at(k, "configMapGenerator")).find((g) => at(g, "name") === name);
  const out: Record<string, string> = {};
  for (const lit of arr(at(gen, "literals")).map(str)) {
    const i = lit.indexOf("=");
    out[lit.slice(0, i)] = lit.slice(i + 1);
  }
  for (const f of arr(at(gen, "files")).map(str)) {
    const [key = "", file = key] = f.split("=");
    out[key] = readFileSync(path.join(base, file), "utf8");
  }
  return out;
}

/** Reads `key value` lines of a redis.conf (last one wins, like Redis). */
export function redisConf(src: string): Map<string, string> {
  const conf = new Map<string, string>();
  for (const line of src.split("\n")) {
    const t = line.trim();
    if (!t || t.startsWith("#")) continue;
    const [key, ...rest] = t.split(/\s+/);
    if (key) conf.set(key.toLowerCase(), rest.join(" "));
  }
  return conf;
}

/** An image reference pinned to an explicit version tag (or digest), never latest. */
export function isPinnedImage(image: string): boolean {
  if (/@sha256:[0-9a-f]{64}$/.test(image)) return true;
  const lastSlash = image.lastIndexOf("/");
  const tagSep = image.indexOf(":", lastSlash + 1);
  if (tagSep < 0) return false;
  const tag = image.slice(tagSep + 1);
  return tag !== "latest" && /\d/.test(tag) && !tag.includes("${");
}

/** A redis.conf memory value ("3gb", "512mb", "1073741824") in bytes; NaN if unreadable. */
export function redisBytes(v: string): number {
  const m = /^(\d+)\s*(b|k|kb|m|mb|g|gb)?$/i.exec(v.trim());
  if (!m?.[1]) return Number.NaN;
  const unit = (m[2] ?? "b").toLowerCase();
  // Redis: k/m/g are powers of 1000, kb/mb/gb powers of 1024.
  const scale: Record<string, number> = { b: 1, k: 1e3, kb: 1024, m: 1e6, mb: 1024 ** 2, g: 1e9, gb: 1024 ** 3 };
  return Number(m[1]) * (scale[unit] ?? Number.NaN);
}

/**
 * One tenant's queued inputs may take at most this share of Redis: inputs are stored
 * base64-encoded (4/3 of their bytes), and a tenant at its quota must leave three
 * quarters of maxmemory to other tenants' queues, retained results and failed jobs,
 * idempotency keys and the audit stream (docs/deployment.md, "Queue quotas and Redis
 * memory").
 */
export const QUOTA_FACTOR = (4 / 3) * 4;
export const QUOTA_FACTOR_TEXT = "4/3 (base64) × 4 (a quarter of Redis)";

/** Results and failed jobs live in Redis (noeviction): their retention must be explicit and short. */
export function expectSaneTtls(resultTtlMs: number, failedTtlMs: number): void {
  expect(Number.isInteger(resultTtlMs) && resultTtlMs >= 60_000, `RESULT_TTL_MS ${resultTtlMs}`).toBe(true);
  expect(resultTtlMs, "RESULT_TTL_MS at most 1 h").toBeLessThanOrEqual(3_600_000);
  expect(Number.isInteger(failedTtlMs) && failedTtlMs >= resultTtlMs, `FAILED_TTL_MS ${failedTtlMs}`).toBe(true);
  expect(failedTtlMs, "FAILED_TTL_MS at most 24 h").toBeLessThanOrEqual(86_400_000);
}

/**
 * Compose's variable substitution on one string, as `docker compose config` does it:
 * `$$` is a literal `$`; `${VAR}`, `$VAR`, `${VAR:-default}` (unset or empty),
 * `${VAR-default}` (unset), `${VAR:?message}` / `${VAR?message}` (an error).
 */
export function composeSubstitute(s: string, vars: Record<string, string | undefined>): string {
  return s.replace(
    /\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))/g,
    (_m, dollar: string | undefined, name?: string, colon?: string, op?: string, arg?: string, bare?: string) => {
      if (dollar) return "$";
      const key = name ?? bare ?? "";
      const v = vars[key];
      const missing = v === undefined || (colon === ":" && v === "");
      if (op === "-") return missing ? (arg ?? "") : (v ?? "");
      if (op === "?" && missing) throw new Error(`compose: required variable ${key} is missing: ${arg ?? ""}`);
      return v ?? "";
    },
  );
}

function substituteDeep(v: unknown, vars: Record<string, string | undefined>): unknown {
  if (typeof v === "string") return composeSubstitute(v, vars);
  if (Array.isArray(v)) return v.map((x) => substituteDeep(x, vars));
  if (isObj(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, substituteDeep(x, vars)]));
  return v;
}

/** `KEY=value` lines of an env_file (comments and blank lines skipped). */
function readEnvFile(file: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const t = line.trim();
    if (!t || t.startsWith("#")) continue;
    const i = t.indexOf("=");
    if (i > 0) out[t.slice(0, i).trim()] = t.slice(i + 1).replace(/^(["'])(.*)\1$/, "$2");
  }
  return out;
}

export interface ComposeService {
  name: string;
  /** The service after merge keys and substitution, as `docker compose config` shows it. */
  spec: Obj;
  /** env_file entries, then `environment` (list or map form), substituted. */
  environment: Record<string, string>;
  /** `entrypoint` and `command` (the image's own are not known here: every app service sets one). */
  entrypoint: string[];
  command: string[];
  /** Mounts: bind mounts as absolute paths on this machine, named volumes by name. */
  mounts: { source: string; target: string; bind: boolean }[];
  /** Service `secrets:` as files, at /run/secrets/<name> unless a target is given. */
  secrets: { file: string; target: string }[];
}

/**
 * docker-compose.yml as `docker compose config` renders it (no Docker needed): YAML
 * merge keys, variable substitution everywhere from `vars` (a fresh clone's empty
 * environment by default), env_file merged under `environment`, secrets as files.
 */
export function renderCompose(vars: Record<string, string | undefined> = {}): Map<string, ComposeService> {
  const doc = substituteDeep(loadCompose(), vars);
  const out = new Map<string, ComposeService>();
  const topSecrets = (at(doc, "secrets") as Obj | undefined) ?? {};
  for (const [name, raw] of Object.entries((at(doc, "services") as Obj | undefined) ?? {})) {
    if (!isObj(raw)) continue;
    const environment: Record<string, string> = {};
    for (const f of Array.isArray(raw.env_file) ? raw.env_file : raw.env_file ? [raw.env_file] : []) {
      Object.assign(environment, readEnvFile(path.resolve(ROOT, str(isObj(f) ? f.path : f))));
    }
    const env = raw.environment;
    if (Array.isArray(env)) {
      for (const e of env.map(String)) {
        const i = e.indexOf("=");
        if (i > 0) environment[e.slice(0, i)] = e.slice(i + 1);
        else if (vars[e] !== undefined) environment[e] = vars[e] ?? "";
      }
    } else if (isObj(env)) {
      for (const [k, v] of Object.entries(env)) if (v !== null && v !== undefined) environment[k] = String(v);
    }
    // A string entrypoint/command is split into words (compose does not add a shell).
    const list = (v: unknown) => (Array.isArray(v) ? v.map(String) : typeof v === "string" ? v.split(/\s+/) : []);
    const mounts = arr(raw.volumes).map((v) => {
      const [source = "", target = ""] = str(v).split(":");
      const bind = source.startsWith(".") || source.startsWith("/");
      return { source: bind ? path.resolve(ROOT, source) : source, target, bind };
    });
    const secrets = arr(raw.secrets).map((s) => {
      const ref = isObj(s) ? str(s.source) : str(s);
      const target = isObj(s) && str(s.target) ? str(s.target) : ref;
      const file = str(at(topSecrets, ref, "file"));
      if (!file) throw new Error(`compose: service ${name} uses secret ${ref}, which has no file`);
      return { file: path.resolve(ROOT, file), target: target.startsWith("/") ? target : `/run/secrets/${target}` };
    });
    out.set(name, {
      name,
      spec: raw,
      environment,
      entrypoint: list(raw.entrypoint),
      command: list(raw.command),
      mounts,
      secrets,
    });
  }
  return out;
}
