import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { freePort } from "@citadel/cli/fleet";
import { afterAll, describe, expect, it } from "vitest";
import { runBootstrap } from "./compose-secrets.js";
import {
  type AppProcess,
  type ClusterObjects,
  mapContainer,
  mapUrl,
  operatorObjects,
  PathMap,
  podContainer,
  startApp,
  startComposeRedis,
  startK8sRedis,
  startVault,
  type TestRedis,
  type TestVault,
  tempDir,
  waitCompleted,
  waitReady,
} from "./deployments.js";
import {
  arr,
  at,
  type ComposeService,
  isObj,
  type Obj,
  RENDERER,
  renderCompose,
  renderOverlay,
  str,
} from "./support.js";

/**
 * The shipped configurations start: every app service of docker-compose.yml and every
 * Deployment/Job of the kustomize base and overlays runs as a process with the
 * environment and command exactly as rendered (test/infra/deployments.ts maps container
 * paths, hosts and ports to this machine), against a redis-server holding that
 * deployment's own ACL users and the Vault test server, and becomes ready: /readyz for
 * the API and workers (their healthcheck / readinessProbe), exit 0 for one-shots. The
 * API starts while Vault refuses connections: it needs no Vault at all.
 */

const VAULT_ENV = /^VAULT_|^KEY_PROVIDER$|^CITADEL_VAULT_ROLE$|^NODE_EXTRA_CA_CERTS$/;
const running: AppProcess[] = [];
const cleanups: (() => Promise<void>)[] = [];

afterAll(async () => {
  await Promise.all(running.splice(0).map((p) => p.stop()));
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** SIGTERM to each process; each must exit 0 (a graceful stop). */
async function stopAll(procs: AppProcess[]): Promise<void> {
  const codes = await Promise.all(procs.map(async (p) => [p.name, await p.stop(), p.output()] as const));
  for (const [name, code, output] of codes) expect(code, `${name} exit code on SIGTERM\n${output}`).toBe(0);
  for (const p of procs) running.splice(running.indexOf(p), 1);
}

async function withVaultDown<T>(vault: TestVault, f: () => Promise<T>): Promise<T> {
  await vault.server.setDown("refuse");
  try {
    return await f();
  } finally {
    await vault.server.setDown(false);
  }
}

/** POSTs one conv-small job through the API and waits for its result. */
async function runOneJob(apiUrl: string, apiKey: string): Promise<{ status: string; provider?: string }> {
  const x = Float32Array.from({ length: 3 * 32 * 32 }, (_, i) => Math.sin(i));
  const headers = { authorization: `Bearer ${apiKey}`, "content-type": "application/json" };
  const body = JSON.stringify({
    model: "conv-small",
    inputs: { x: { dtype: "float32", shape: [1, 3, 32, 32], data: Buffer.from(x.buffer).toString("base64") } },
  });
  const sub = await fetch(`${apiUrl}/v1/jobs`, { method: "POST", headers, body });
  const accepted = (await sub.json()) as { id?: string };
  expect(sub.status, JSON.stringify(accepted)).toBe(202);
  const view = await fetch(`${apiUrl}/v1/jobs/${accepted.id}?wait=30000`, { headers });
  const v = (await view.json()) as { status: string; result?: { provider: string }; error?: unknown };
  return { status: v.status, provider: v.result?.provider };
}

// ---------------------------------------------------------------------------------
// docker compose

describe("docker-compose.yml: every app service starts as rendered", () => {
  const rendered = renderCompose();
  const svc = (name: string): ComposeService => {
    const s = rendered.get(name);
    if (!s) throw new Error(`no service ${name}`);
    return s;
  };

  it("publisher, cli, api (with Vault down), worker and worker-gpu become ready and stop cleanly; a job runs", {
    timeout: 300_000,
  }, async () => {
    expect(process.getuid?.(), "the bootstrap chgrps files to each role's gid: run as root").toBe(0);
    // Every service built from a Citadel image is started here (secrets-init by runBootstrap).
    const citadel = [...rendered.values()].filter((s) => str(s.spec.image).startsWith("citadel/")).map((s) => s.name);
    expect(citadel.sort()).toEqual(["api", "cli", "publisher", "secrets-init", "worker", "worker-gpu"]);
    const layout = runBootstrap();
    cleanups.push(async () => rmSync(layout.dir, { recursive: true, force: true }));
    const vault = await startVault();
    cleanups.push(() => vault.stop());
    // init.sh's AppRole files, with credentials the Vault test server accepts.
    for (const [volume, role] of [
      ["citadel-secrets-worker", "citadel-worker"],
      ["citadel-secrets-publisher", "citadel-publisher"],
    ] as const) {
      const dir = path.join(layout.volumes.get(volume) ?? "", "approle");
      const { roleId, secretId } = await vault.approle(role);
      writeFileSync(path.join(dir, `${role}.role-id`), roleId);
      writeFileSync(path.join(dir, `${role}.secret-id`), secretId);
    }
    const redis = await startComposeRedis(layout);
    cleanups.push(() => redis.stop());
    const hosts = { "redis:6379": `redis://127.0.0.1:${redis.port}`, "vault:8200": vault.server.addr };

    /** A named volume's folder, shared by every service that mounts it. */
    const volumeDir = (name: string) => {
      const known = layout.volumes.get(name);
      if (known) return known;
      const dir = path.join(layout.dir, "volumes", name);
      mkdirSync(dir, { recursive: true });
      layout.volumes.set(name, dir);
      return dir;
    };

    const start = async (name: string, command?: string[]) => {
      const s = svc(name);
      const paths = new PathMap();
      for (const m of s.mounts) paths.add(m.target, m.bind ? m.source : volumeDir(m.source));
      for (const sec of s.secrets) paths.add(sec.target, sec.file);
      for (const t of arr(s.spec.tmpfs).map((x) => str(x).split(":")[0] ?? "")) {
        paths.add(t, path.join(layout.dir, "tmpfs", name, t));
        mkdirSync(path.join(layout.dir, "tmpfs", name, t), { recursive: true });
      }
      const ports: Record<string, string> = {};
      for (const port of ["8080", "9464"]) ports[port] = String(await freePort());
      const env: Record<string, string> = {};
      for (const [k, v] of Object.entries(s.environment)) {
        env[k] = v.startsWith("/") ? paths.path(v) : mapUrl(v, hosts);
        if (/_PORT$/.test(k) && ports[v]) env[k] = ports[v] ?? v;
      }
      // with-secrets.sh's own knobs for where Redis is (compose's service name by default).
      env.REDIS_HOST = "127.0.0.1";
      env.REDIS_PORT = String(redis.port);
      // `docker compose run <service> <command…>` replaces the command, keeps the entrypoint.
      const argv = [...s.entrypoint, ...(command ?? s.command)].map((a) => paths.text(a));
      const p = startApp(`compose ${name}`, argv, env);
      running.push(p);
      // Its healthcheck's URL, on the mapped port.
      const check = arr(at(s.spec, "healthcheck", "test"))
        .map(str)
        .join(" ");
      const m = /http:\/\/127\.0\.0\.1:(\d+)(\/\w+)/.exec(check);
      return { p, env, readyUrl: m ? `http://127.0.0.1:${ports[m[1] ?? ""] ?? m[1]}${m[2]}` : undefined };
    };
    const oneShot = async (name: string, command?: string[]) => {
      const { p } = await start(name, command);
      await waitCompleted(p);
      running.splice(running.indexOf(p), 1);
      return p;
    };

    await oneShot("publisher");
    await oneShot("cli");
    await oneShot("cli", ["tenants", "add", "acme"]);
    const issued = await oneShot("cli", ["tenants", "issue-key", "acme"]);
    const apiKey = issued.stdout().trim().split("\n").at(-1) ?? "";
    expect(apiKey).toMatch(/^\S{20,}$/);

    // The API: no Vault setting, and ready while Vault refuses every connection.
    const api = await withVaultDown(vault, async () => {
      const a = await start("api");
      expect(Object.keys(a.env).filter((k) => VAULT_ENV.test(k))).toEqual([]);
      expect(a.readyUrl).toBeDefined();
      await waitReady(a.p, a.readyUrl ?? "");
      return a;
    });
    const worker = await start("worker");
    await waitReady(worker.p, worker.readyUrl ?? "");
    // The whole path under the least-privilege Redis users: API → queue → worker → result.
    const apiUrl = (api.readyUrl ?? "").replace(/\/readyz$/, "");
    expect(await runOneJob(apiUrl, apiKey)).toEqual({ status: "completed", provider: "cpu" });
    const gpu = await start("worker-gpu");
    await waitReady(gpu.p, gpu.readyUrl ?? "");
    await stopAll([api.p, worker.p, gpu.p]);
  });
});

// ---------------------------------------------------------------------------------
// Kubernetes

function component(w: Obj): string {
  return str(at(w, "spec", "template", "metadata", "labels", "app.kubernetes.io/component"));
}

/** A workload's first container on this machine, started; its readiness URL from its probe. */
async function startPod(
  docs: Obj[],
  w: Obj,
  cluster: ClusterObjects,
  dir: string,
  hosts: Record<string, string>,
  /** Another command in the same container (as `kubectl exec` would run it). */
  command?: string[],
): Promise<{ p: AppProcess; env: Record<string, string>; readyUrl?: string }> {
  const c = arr(at(w, "spec", "template", "spec", "containers")).find(isObj) ?? {};
  const pc = podContainer(docs, w, str(c.name), cluster, path.join(dir, str(at(w, "metadata", "name"))));
  const ports: Record<string, string> = {};
  const byName: Record<string, string> = {};
  for (const port of arr(c.ports)) {
    const free = String(await freePort());
    ports[String(at(port, "containerPort"))] = free;
    byName[str(at(port, "name"))] = free;
  }
  const { argv, env } = mapContainer(command ? { ...pc, argv: command } : pc, hosts, ports);
  const p = startApp(`${str(w.kind)}/${str(at(w, "metadata", "name"))}`, argv, env);
  running.push(p);
  const probe = at(c, "readinessProbe", "httpGet");
  const port = probe ? (byName[str(at(probe, "port"))] ?? ports[String(at(probe, "port"))]) : undefined;
  return { p, env, readyUrl: probe ? `http://127.0.0.1:${port}${str(at(probe, "path"))}` : undefined };
}

describe.each(["base", "cpu", "gpu"] as const)("k8s %s: every Deployment and Job starts as rendered", (overlay) => {
  const { docs, rendered } = renderOverlay(overlay);

  it.skipIf(!rendered && overlay !== "base")(
    `publisher Job, API (with Vault down) and workers become ready and stop cleanly (${RENDERER ?? "structural: base only"})`,
    { timeout: 300_000 },
    async () => {
      const dir = tempDir(`k8s-${overlay}`);
      const vault = await startVault();
      cleanups.push(() => vault.stop());
      const cluster = operatorObjects(vault.signers, dir);
      const redis: TestRedis = await startK8sRedis(docs, cluster, path.join(dir, "redis"));
      cleanups.push(() => redis.stop());
      const hosts = {
        "citadel-redis:6379": `redis://127.0.0.1:${redis.port}`,
        "vault.vault.svc:8200": vault.server.addr,
      };
      const workloads = docs.filter((d) => d.kind === "Deployment" || d.kind === "Job");
      expect(new Set(workloads.map(component))).toEqual(
        new Set(overlay === "base" ? ["api", "worker"] : ["api", "worker", "publisher"]),
      );

      for (const job of workloads.filter((w) => w.kind === "Job")) {
        const { p } = await startPod(docs, job, cluster, dir, hosts);
        await waitCompleted(p);
        running.splice(running.indexOf(p), 1);
      }
      const long: AppProcess[] = [];
      const apiUrls: string[] = [];
      await withVaultDown(vault, async () => {
        for (const api of workloads.filter((w) => w.kind === "Deployment" && component(w) === "api")) {
          const a = await startPod(docs, api, cluster, dir, hosts);
          expect(
            Object.keys(a.env).filter((k) => VAULT_ENV.test(k)),
            "API env",
          ).toEqual([]);
          expect(
            arr(at(api, "spec", "template", "spec", "volumes")).filter((v) => at(v, "projected") !== undefined),
            "no service-account token for the API",
          ).toEqual([]);
          await waitReady(a.p, a.readyUrl ?? "");
          long.push(a.p);
          apiUrls.push((a.readyUrl ?? "").replace(/\/readyz$/, ""));
        }
      });
      for (const w of workloads.filter((x) => x.kind === "Deployment" && component(x) === "worker")) {
        const started = await startPod(docs, w, cluster, dir, hosts);
        await waitReady(started.p, started.readyUrl ?? "");
        long.push(started.p);
      }
      if (overlay !== "base") {
        // The sample publisher logged in through Kubernetes auth and signed with Transit.
        expect(vault.server.requests.some((r) => r.path === "auth/kubernetes/login" && r.status === 200)).toBe(true);
      }
      if (overlay === "cpu") {
        // The whole path under the least-privilege Redis users: a tenant made with the CLI in
        // the publisher's container, then API → queue → worker (Vault unwrap) → result.
        const job = workloads.find((w) => w.kind === "Job");
        const cli = async (...args: string[]) => {
          const run = await startPod(docs, job ?? {}, cluster, dir, hosts, [
            "node",
            "apps/cli/bin/citadel.mjs",
            ...args,
          ]);
          await waitCompleted(run.p);
          running.splice(running.indexOf(run.p), 1);
          return run.p.stdout().trim().split("\n").at(-1) ?? "";
        };
        await cli("tenants", "add", "acme");
        const apiKey = await cli("tenants", "issue-key", "acme");
        expect(apiKey).toMatch(/^\S{20,}$/);
        expect(await runOneJob(apiUrls[0] ?? "", apiKey)).toEqual({ status: "completed", provider: "cpu" });
      }
      await stopAll(long);
    },
  );
});
