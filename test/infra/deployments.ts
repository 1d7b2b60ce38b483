import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { freePort } from "@citadel/cli/fleet";
import {
  makeServiceAccountJwt,
  POLICY_DIR,
  startVaultTestServer,
  type VaultTestServer,
} from "../support/vault-server/index.js";
import { type Layout, volumeMounts } from "./compose-secrets.js";
import { arr, at, configMapData, isObj, type Obj, ROOT, str } from "./support.js";

/**
 * Runs the shipped deployments' processes on this machine, as rendered: each container
 * path becomes a temp folder holding the same kind of content (secret files, ConfigMap
 * files, a projected service-account token, the shared model store), Redis and Vault
 * URLs point at a redis-server of the test's own (loaded with the deployment's ACL
 * file) and at the Vault test server (test/support/vault-server, plain HTTP), and
 * listening ports at free ports. Nothing else in an environment or a command changes.
 */

export const PREFIX = "{citadel}";

// ---------------------------------------------------------------------------------
// Path, host and port mapping

/** Container path → this machine's path, longest mount first. */
export class PathMap {
  private readonly mounts: [string, string][] = [];

  add(target: string, local: string): void {
    this.mounts.push([target.replace(/\/$/, ""), local]);
    this.mounts.sort((a, b) => b[0].length - a[0].length);
  }

  /** A whole value that is a container path (or under one). */
  path(p: string): string {
    for (const [target, local] of this.mounts) {
      if (p === target) return local;
      if (p.startsWith(`${target}/`)) return local + p.slice(target.length);
    }
    return p;
  }

  /** Container paths inside a shell command line or a config file (one pass: mapped paths stay as they are). */
  text(s: string): string {
    if (this.mounts.length === 0) return s;
    const alternatives = this.mounts.map(([target]) => target.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|");
    const re = new RegExp(`(?<![\\w./-])(${alternatives})(?=/|\\s|$|["';&|>])`, "g");
    return s.replace(re, (target) => this.mounts.find(([t]) => t === target)?.[1] ?? target);
  }
}

/** Rewrites `scheme://[user@]host:port` to the test's own servers (https → http for Vault). */
export function mapUrl(value: string, hosts: Record<string, string>): string {
  const m = /^([a-z]+):\/\/([^@/]*@)?([^/:]+):(\d+)(.*)$/.exec(value);
  if (!m) return value;
  const to = hosts[`${m[3]}:${m[4]}`];
  if (!to) return value;
  const toUrl = new URL(to);
  const scheme = m[1] === "https" ? toUrl.protocol.replace(":", "") : m[1];
  return `${scheme}://${m[2] ?? ""}${toUrl.host}${m[5] ?? ""}`;
}

// ---------------------------------------------------------------------------------
// Processes

export interface AppProcess {
  name: string;
  child: ChildProcess;
  /** The last 4,000 characters of stdout and stderr together. */
  output(): string;
  stdout(): string;
  exited: Promise<number | string | null>;
  /** SIGTERM to the process group; resolves with the exit code (or signal name). */
  stop(): Promise<number | string | null>;
}

/**
 * Starts argv in its own process group with exactly `env` (plus this machine's PATH):
 * the image's command as it is, run from the repository root (the images' workdir).
 */
export function startApp(name: string, argv: string[], env: Record<string, string>): AppProcess {
  const [cmd = "", ...args] = argv;
  const child = spawn(cmd, args, {
    cwd: ROOT,
    detached: true,
    env: { PATH: process.env.PATH ?? "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const chunks: string[] = [];
  const out: string[] = [];
  child.stdout?.on("data", (b: Buffer) => {
    chunks.push(b.toString());
    out.push(b.toString());
  });
  child.stderr?.on("data", (b: Buffer) => chunks.push(b.toString()));
  const exited = new Promise<number | string | null>((resolve) =>
    child.once("exit", (code, sig) => resolve(code ?? sig)),
  );
  const reap = () => {
    if (child.exitCode === null && child.pid) process.kill(-child.pid, "SIGKILL");
  };
  process.once("exit", reap);
  void exited.then(() => process.removeListener("exit", reap));
  return {
    name,
    child,
    output: () => chunks.join("").slice(-4000),
    stdout: () => out.join(""),
    exited,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null && child.pid) process.kill(-child.pid, "SIGTERM");
      return exited;
    },
  };
}

/**
 * Polls a readiness URL (as the kubelet's probe or compose's healthcheck does) until it
 * answers 2xx; fails as soon as the process exits, or after `timeoutMs`.
 */
export async function waitReady(p: AppProcess, url: string, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exit: number | string | null | undefined;
  void p.exited.then((c) => {
    exit = c;
  });
  for (;;) {
    if (exit !== undefined) throw new Error(`${p.name} exited (${String(exit)}) before ready:\n${p.output()}`);
    const ok = await fetch(url, { signal: AbortSignal.timeout(2000) }).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${p.name} not ready at ${url} in ${timeoutMs} ms:\n${p.output()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A one-shot's readiness: it ends with exit code 0. */
export async function waitCompleted(p: AppProcess, timeoutMs = 120_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([
    p.exited,
    new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
    }),
  ]);
  clearTimeout(timer);
  if (code !== 0) {
    await p.stop();
    throw new Error(`${p.name} ended with ${String(code)}:\n${p.output()}`);
  }
}

// ---------------------------------------------------------------------------------
// Redis with the deployment's ACL file

export interface TestRedis {
  port: number;
  url(user: string, password: string): string;
  stop(): Promise<void>;
}

/**
 * redis-server with a deployment's redis.conf (container paths mapped), its ACL file,
 * and a port and data folder of its own. Ready when it says so on stdout.
 */
export async function startRedis(conf: string, paths: PathMap, dir: string): Promise<TestRedis> {
  mkdirSync(dir, { recursive: true });
  const confFile = path.join(dir, "redis.conf");
  writeFileSync(confFile, paths.text(conf));
  const port = await freePort();
  const child = spawn("redis-server", [confFile, "--port", String(port), "--bind", "127.0.0.1"], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  await new Promise<void>((resolve, reject) => {
    const onData = (b: Buffer) => {
      out += b.toString();
      if (out.includes("Ready to accept connections")) resolve();
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.once("exit", (code) => reject(new Error(`redis-server exited ${String(code)}:\n${out}`)));
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return {
    port,
    url: (user, password) => `redis://${user}:${password}@127.0.0.1:${port}`,
    stop: async () => {
      child.kill("SIGKILL");
      await exited;
    },
  };
}

// ---------------------------------------------------------------------------------
// Vault, configured as infra/vault/init.sh leaves it

export interface TestVault {
  server: VaultTestServer;
  /** A fresh AppRole login for a role (what init.sh writes into the role's files). */
  approle(role: string): Promise<{ roleId: string; secretId: string }>;
  /** `citadel keys show`'s content: the pinned signer public keys. */
  signers: { keyId: string; publicKey: string }[];
  stop(): Promise<void>;
}

export async function startVault(namespace = "citadel"): Promise<TestVault> {
  const server = await startVaultTestServer({ policyDir: POLICY_DIR });
  const call = async (method: string, p: string, body?: object): Promise<Obj> => {
    const r = await fetch(`${server.addr}/v1/${p}`, {
      method,
      headers: { "x-vault-token": server.rootToken, "content-type": "application/json" },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    const text = await r.text();
    if (r.status >= 300) throw new Error(`vault ${method} ${p}: ${r.status} ${text}`);
    return text ? (JSON.parse(text) as Obj) : {};
  };
  try {
    await call("POST", "transit/keys/citadel-models", { type: "aes256-gcm96" });
    await call("POST", "transit/keys/citadel-signing", { type: "ed25519" });
    for (const role of ["citadel-worker", "citadel-publisher"]) {
      await call("POST", `auth/approle/role/${role}`, {
        token_policies: [role],
        token_ttl: "1h",
        token_max_ttl: "24h",
      });
      await call("POST", `auth/kubernetes/role/${role}`, {
        bound_service_account_names: [role],
        bound_service_account_namespaces: [namespace],
        audience: "vault",
        token_policies: [role],
      });
    }
    const keys = (await call("GET", "transit/keys/citadel-signing")) as { data: { keys: Obj } };
    const signers = Object.entries(keys.data.keys).map(([v, k]) => ({
      keyId: `vault:transit/citadel-signing:v${v}`,
      publicKey: str(at(k, "public_key")),
    }));
    return {
      server,
      signers,
      approle: async (role) => ({
        roleId: str(at(await call("GET", `auth/approle/role/${role}/role-id`), "data", "role_id")),
        secretId: str(at(await call("POST", `auth/approle/role/${role}/secret-id`), "data", "secret_id")),
      }),
      stop: () => server.stop(),
    };
  } catch (err) {
    await server.stop();
    throw err;
  }
}

// ---------------------------------------------------------------------------------
// Kubernetes: a pod's volumes, environment and command on this machine

/** What exists in the namespace besides the rendered manifests (created by the operator). */
export interface ClusterObjects {
  secrets: Record<string, Record<string, string>>;
  configMaps: Record<string, Record<string, string>>;
  /** PersistentVolumeClaim name → its folder (shared by every pod that mounts it). */
  volumes: Record<string, string>;
}

/** The Secrets and ConfigMaps docs/deployment.md has an operator create, with fresh values. */
export function operatorObjects(signers: TestVault["signers"], dir: string): ClusterObjects {
  const hex = () => randomBytes(24).toString("hex");
  const secrets: ClusterObjects["secrets"] = {
    "citadel-redis-users": { api: hex(), worker: hex(), publisher: hex(), keda: hex(), health: hex() },
    "citadel-board": { "admin-password": hex(), "ops-password": hex() },
    "citadel-webhook-key": { "webhook-key": randomBytes(32).toString("base64") },
  };
  for (const role of ["api", "worker", "publisher"]) {
    secrets[`citadel-audit-${role}`] = { "audit-key": randomBytes(32).toString("base64") };
  }
  const models = path.join(dir, "pvc-citadel-models");
  mkdirSync(models, { recursive: true });
  return {
    secrets,
    configMaps: {
      "citadel-trusted-signers": { "trusted-signers.json": JSON.stringify(signers) },
      // What kustomize generates, for the structural read (no kubectl): rendered
      // manifests name their own (hash-suffixed) ConfigMaps, found first.
      "citadel-redis-acl": { "acl-rules.conf": readFileSync(path.join(ROOT, "infra/redis/acl-rules.conf"), "utf8") },
      "citadel-redis-config": { "redis.conf": readFileSync(path.join(ROOT, "infra/k8s/base/redis.conf"), "utf8") },
    },
    volumes: { "citadel-models": models },
  };
}

function configMapByName(docs: Obj[], cluster: ClusterObjects, name: string): Record<string, string> | undefined {
  const cm = docs.find((d) => d.kind === "ConfigMap" && at(d, "metadata", "name") === name);
  if (cm)
    return Object.fromEntries(
      Object.entries((at(cm, "data") as Obj | undefined) ?? {}).map(([k, v]) => [k, String(v)]),
    );
  if (cluster.configMaps[name]) return cluster.configMaps[name];
  // The structural read (no kubectl): the base's configMapGenerator entries, unrendered.
  const generated = configMapData(docs, name);
  return Object.keys(generated).length ? generated : undefined;
}

function writeItems(dir: string, data: Record<string, string>, items: unknown[]): void {
  mkdirSync(dir, { recursive: true });
  const chosen = items.length
    ? items.map((i) => [str(at(i, "key")), str(at(i, "path"))] as const)
    : Object.keys(data).map((k) => [k, k] as const);
  for (const [key, file] of chosen) {
    const value = data[key];
    if (value === undefined) throw new Error(`no key ${key}`);
    mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
    writeFileSync(path.join(dir, file), value, { mode: 0o400 });
  }
}

export interface PodContainer {
  argv: string[];
  env: Record<string, string>;
  paths: PathMap;
}

/**
 * A container of a rendered pod on this machine: its volumes written under `dir`, its
 * environment as the kubelet builds it (envFrom, then env with `$(VAR)` expanded,
 * Secret/ConfigMap/field references resolved), and its command with `$(VAR)` expanded.
 */
export function podContainer(
  docs: Obj[],
  workload: Obj,
  containerName: string,
  cluster: ClusterObjects,
  dir: string,
): PodContainer {
  const pod = (at(workload, "spec", "template", "spec") as Obj | undefined) ?? {};
  const podName = `${str(at(workload, "metadata", "name"))}-0`;
  const c = [...arr(pod.initContainers), ...arr(pod.containers)].find((x) => at(x, "name") === containerName);
  if (!isObj(c)) throw new Error(`no container ${containerName}`);
  const paths = new PathMap();
  for (const m of arr(c.volumeMounts)) {
    const v = arr(pod.volumes).find((x) => at(x, "name") === at(m, "name"));
    const claimTemplate = arr(at(workload, "spec", "volumeClaimTemplates")).some(
      (t) => at(t, "metadata", "name") === at(m, "name"),
    );
    if (claimTemplate) {
      // A StatefulSet's own claim: a folder of its own.
      const local = path.join(dir, "volumes", str(at(m, "name")));
      mkdirSync(local, { recursive: true });
      paths.add(str(at(m, "mountPath")), local);
      continue;
    }
    if (!isObj(v)) throw new Error(`volume ${str(at(m, "name"))} is not declared`);
    const local = path.join(dir, "volumes", str(v.name));
    if (isObj(v.configMap)) {
      const data = configMapByName(docs, cluster, str(v.configMap.name));
      if (data) writeItems(local, data, arr(v.configMap.items));
      else if (v.configMap.optional === true) mkdirSync(local, { recursive: true });
      else throw new Error(`ConfigMap ${str(v.configMap.name)} does not exist`);
    } else if (isObj(v.secret)) {
      const data = cluster.secrets[str(v.secret.secretName)];
      if (!data) throw new Error(`Secret ${str(v.secret.secretName)} does not exist`);
      writeItems(local, data, arr(v.secret.items));
    } else if (isObj(v.projected)) {
      mkdirSync(local, { recursive: true });
      for (const s of arr(v.projected.sources)) {
        const sat = at(s, "serviceAccountToken");
        if (!isObj(sat)) throw new Error("only serviceAccountToken projections are mapped");
        const jwt = makeServiceAccountJwt({
          namespace: str(at(workload, "metadata", "namespace")) || "citadel",
          name: str(pod.serviceAccountName),
          audience: str(sat.audience),
          expiresIn: Number(sat.expirationSeconds ?? 3600),
        });
        writeFileSync(path.join(local, str(sat.path)), jwt, { mode: 0o400 });
      }
    } else if (isObj(v.persistentVolumeClaim)) {
      const claim = cluster.volumes[str(v.persistentVolumeClaim.claimName)];
      if (!claim) throw new Error(`PVC ${str(v.persistentVolumeClaim.claimName)} has no folder`);
      paths.add(str(at(m, "mountPath")), claim);
      continue;
    } else if (isObj(v.emptyDir)) {
      mkdirSync(local, { recursive: true });
    } else {
      throw new Error(`volume ${str(v.name)}: kind not mapped`);
    }
    paths.add(str(at(m, "mountPath")), local);
  }
  const env: Record<string, string> = {};
  const expand = (s: string) =>
    s.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, ref: string) => (ref in env ? (env[ref] ?? "") : m));
  for (const from of arr(c.envFrom)) {
    const cmName = str(at(from, "configMapRef", "name"));
    const data = configMapByName(docs, cluster, cmName);
    if (!data) throw new Error(`envFrom ConfigMap ${cmName} does not exist`);
    Object.assign(env, data);
  }
  for (const e of arr(c.env)) {
    const key = str(at(e, "name"));
    const value = at(e, "value");
    const secretRef = at(e, "valueFrom", "secretKeyRef");
    const cmRef = at(e, "valueFrom", "configMapKeyRef");
    const field = str(at(e, "valueFrom", "fieldRef", "fieldPath"));
    if (typeof value === "string") env[key] = expand(value);
    else if (isObj(secretRef)) {
      const v = cluster.secrets[str(secretRef.name)]?.[str(secretRef.key)];
      if (v === undefined) throw new Error(`Secret ${str(secretRef.name)} has no key ${str(secretRef.key)}`);
      env[key] = v;
    } else if (isObj(cmRef)) {
      const v = configMapByName(docs, cluster, str(cmRef.name))?.[str(cmRef.key)];
      if (v === undefined) throw new Error(`ConfigMap ${str(cmRef.name)} has no key ${str(cmRef.key)}`);
      env[key] = v;
    } else if (field === "metadata.name") env[key] = podName;
    else if (field === "metadata.namespace") env[key] = str(at(workload, "metadata", "namespace")) || "citadel";
    else throw new Error(`env ${key}: reference not mapped`);
  }
  const argv = [...arr(c.command), ...arr(c.args)].map((a) => expand(String(a)));
  return { argv, env, paths };
}

/** `sh -c` scripts and env values with container paths mapped; other args as they are. */
export function mapContainer(
  pc: PodContainer,
  hosts: Record<string, string>,
  ports: Record<string, string>,
): { argv: string[]; env: Record<string, string> } {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(pc.env)) {
    let out = v.startsWith("/") ? pc.paths.path(v) : mapUrl(v, hosts);
    if (/_PORT$/.test(k) && ports[v]) out = ports[v] ?? v;
    env[k] = out;
  }
  const argv = pc.argv.map((a) => pc.paths.text(a));
  return { argv, env };
}

/** Runs a one-shot shell command (an init container) and fails with its output if it fails. */
export function runInit(name: string, argv: string[], env: Record<string, string>): void {
  const [cmd = "", ...args] = argv;
  const r = spawnSync(cmd, args, { cwd: ROOT, env: { PATH: process.env.PATH ?? "", ...env }, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${name} failed (${String(r.status)}): ${r.stdout}${r.stderr}`);
}

// Removed after the importing file's tests (the operator objects hold secrets).
export { tempDir } from "../support/temp-dirs.js";

export function readText(file: string): string {
  return readFileSync(file, "utf8");
}

// ---------------------------------------------------------------------------------
// Each deployment's Redis, with the ACL file that deployment builds

/** compose: redis-server with infra/redis/redis.conf and the ACL file gen-secrets.mjs wrote. */
export async function startComposeRedis(layout: Layout): Promise<TestRedis> {
  const paths = new PathMap();
  for (const m of volumeMounts("redis")) {
    const dir = layout.volumes.get(m.volume) ?? path.join(layout.dir, "volumes", m.volume);
    mkdirSync(dir, { recursive: true });
    paths.add(m.target, dir);
  }
  const conf = readFileSync(path.join(ROOT, "infra/redis/redis.conf"), "utf8");
  return startRedis(conf, paths, paths.path("/data"));
}

/** The compose roles' Redis passwords, as gen-secrets.mjs wrote them. */
export function composeRedisPasswords(layout: Layout): Record<string, string> {
  const file = (volume: string, name: string) =>
    readFileSync(path.join(layout.volumes.get(volume) ?? "", name), "utf8").trim();
  return {
    api: file("citadel-secrets-api", "redis-password"),
    worker: file("citadel-secrets-worker", "redis-password"),
    publisher: file("citadel-secrets-publisher", "redis-password"),
    health: file("citadel-secrets-redis", "redis-health-password"),
  };
}

/**
 * k8s: the citadel-redis StatefulSet on this machine: its `acl` init container run as
 * rendered (rules ConfigMap + Secret citadel-redis-users → ACL file), then redis-server
 * with the rendered redis.conf and the redis container's mounts.
 */
export async function startK8sRedis(docs: Obj[], cluster: ClusterObjects, dir: string): Promise<TestRedis> {
  const sts = docs.find((d) => d.kind === "StatefulSet" && at(d, "metadata", "name") === "citadel-redis");
  if (!sts) throw new Error("no StatefulSet citadel-redis");
  const init = podContainer(docs, sts, "acl", cluster, dir);
  const run = mapContainer(init, {}, {});
  runInit("citadel-redis init container acl", run.argv, run.env);
  const server = podContainer(docs, sts, "redis", cluster, dir);
  const cm = docs.find(
    (d) => d.kind === "ConfigMap" && str(at(d, "metadata", "name")).startsWith("citadel-redis-config"),
  );
  const conf = cm
    ? str(at(cm, "data", "redis.conf"))
    : (cluster.configMaps["citadel-redis-config"]?.["redis.conf"] ?? "");
  return startRedis(conf, server.paths, server.paths.path("/data"));
}
