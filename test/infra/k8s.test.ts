import { readFileSync } from "node:fs";
import path from "node:path";
import { SERVICE_NODE_FLAGS } from "@citadel/config";
import { keys } from "@citadel/queue";
import { describe, expect, it } from "vitest";
import { ApiEnv } from "../../apps/api/src/env.js";
import { roleIds } from "./compose-secrets.js";
import {
  arr,
  at,
  configMapData,
  containersOf,
  envValue,
  expectSaneTtls,
  INFRA,
  isObj,
  isPinnedImage,
  MODELS,
  named,
  type Obj,
  podSpecOf,
  QUOTA_FACTOR,
  QUOTA_FACTOR_TEXT,
  RENDERER,
  redisBytes,
  redisConf,
  renderOverlay,
  str,
  workloads,
} from "./support.js";

const OVERLAYS = ["cpu", "gpu"] as const;
const how = RENDERER ? `rendered with ${RENDERER}` : "structural check: kubectl/kustomize absent, patches not applied";

function name(o: Obj): string {
  return `${str(o.kind)}/${str(at(o, "metadata", "name"))}`;
}

function workerDeployments(docs: Obj[]): Obj[] {
  return docs.filter(
    (d) => d.kind === "Deployment" && at(d, "metadata", "labels", "app.kubernetes.io/component") === "worker",
  );
}

function workerContainer(d: Obj): Obj {
  const c = arr(at(podSpecOf(d), "containers")).find((x) => at(x, "name") === "worker");
  if (!isObj(c)) throw new Error(`${name(d)} has no worker container`);
  return c;
}

/** An nginx size ("16m", "200m", "1g", "512k", "1024") in bytes: k, m and g are powers of 1024. */
function nginxBytes(v: string): number {
  const m = /^([0-9]+)([kmg])?$/i.exec(v.trim());
  if (!m?.[1]) throw new Error(`not an nginx size: ${v}`);
  return Number(m[1]) * 1024 ** (m[2] ? "kmg".indexOf(m[2].toLowerCase()) + 1 : 0);
}

/** A Kubernetes quantity ("250m", "1", "16Mi", "1Gi", "2G") as a number of units. */
function quantity(v: unknown): number {
  const m = /^([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$/.exec(String(v));
  if (!m?.[1]) throw new Error(`not a quantity: ${String(v)}`);
  const scale: Record<string, number> = {
    m: 1e-3,
    k: 1e3,
    M: 1e6,
    G: 1e9,
    T: 1e12,
    Ki: 1024,
    Mi: 1024 ** 2,
    Gi: 1024 ** 3,
    Ti: 1024 ** 4,
  };
  return Number(m[1]) * (m[2] ? (scale[m[2]] ?? Number.NaN) : 1);
}

describe.each(OVERLAYS)(`k8s overlay %s (${how})`, (overlay) => {
  const { docs } = renderOverlay(overlay);

  it("renders the whole fleet", () => {
    const kinds = new Set(docs.map((d) => str(d.kind)));
    for (const k of [
      "Namespace",
      "Deployment",
      "Service",
      "StatefulSet",
      "ScaledObject",
      "TriggerAuthentication",
      "NetworkPolicy",
      "ResourceQuota",
      "LimitRange",
      "PodDisruptionBudget",
      "ServiceAccount",
      "ClusterRoleBinding",
    ]) {
      expect(kinds, `kind ${k}`).toContain(k);
    }
    expect(named(docs, "Deployment", "citadel-api")).toBeDefined();
    expect(workerDeployments(docs).map((d) => at(d, "metadata", "name"))).toEqual(
      expect.arrayContaining(MODELS.map((m) => `citadel-worker-${m}`)),
    );
  });

  it("hardens every pod and container", () => {
    const pods = workloads(docs);
    expect(pods.length).toBeGreaterThanOrEqual(4);
    for (const w of pods) {
      const pod = podSpecOf(w);
      expect(pod, name(w)).toBeDefined();
      if (!pod) continue;
      const podSc = isObj(pod.securityContext) ? pod.securityContext : {};
      expect(podSc.runAsNonRoot, `${name(w)} pod runAsNonRoot`).toBe(true);
      expect(str(at(podSc, "seccompProfile", "type")), `${name(w)} pod seccomp`).toMatch(
        /^(RuntimeDefault|Localhost)$/,
      );
      expect(pod.automountServiceAccountToken, `${name(w)} automountServiceAccountToken`).toBe(false);
      expect(pod.hostNetwork ?? false, `${name(w)} hostNetwork`).toBe(false);
      expect(pod.hostPID ?? false, `${name(w)} hostPID`).toBe(false);
      for (const v of arr(pod.volumes)) expect(at(v, "hostPath"), `${name(w)} hostPath volume`).toBeUndefined();
      const containers = containersOf(pod);
      expect(containers.length, name(w)).toBeGreaterThan(0);
      for (const c of containers) {
        const where = `${name(w)} container ${str(c.name)}`;
        const sc = isObj(c.securityContext) ? c.securityContext : {};
        expect(sc.allowPrivilegeEscalation, `${where} allowPrivilegeEscalation`).toBe(false);
        expect(sc.readOnlyRootFilesystem, `${where} readOnlyRootFilesystem`).toBe(true);
        expect(sc.privileged ?? false, `${where} privileged`).toBe(false);
        expect(arr(at(sc, "capabilities", "drop")), `${where} capabilities.drop`).toContain("ALL");
        expect(arr(at(sc, "capabilities", "add")), `${where} capabilities.add`).toEqual([]);
        expect(sc.runAsNonRoot ?? podSc.runAsNonRoot, `${where} runAsNonRoot`).toBe(true);
        const uid = sc.runAsUser ?? podSc.runAsUser;
        expect(typeof uid === "number" && uid > 0, `${where} runAsUser ${String(uid)}`).toBe(true);
        const seccomp = str(at(sc, "seccompProfile", "type")) || str(at(podSc, "seccompProfile", "type"));
        expect(seccomp, `${where} seccomp`).toMatch(/^(RuntimeDefault|Localhost)$/);
        if (RENDERER) expect(isPinnedImage(str(c.image)), `${where} image ${str(c.image)} pinned`).toBe(true);
        expect(at(c, "resources", "limits", "memory"), `${where} memory limit`).toBeDefined();
        expect(at(c, "resources", "requests", "cpu"), `${where} cpu request`).toBeDefined();
      }
    }
  });

  it("gives long-running containers liveness and readiness probes", () => {
    for (const w of docs.filter((d) => d.kind === "Deployment" || d.kind === "StatefulSet")) {
      const pod = podSpecOf(w);
      for (const c of arr(pod?.containers).filter(isObj)) {
        expect(c.livenessProbe, `${name(w)} liveness`).toBeDefined();
        expect(c.readinessProbe, `${name(w)} readiness`).toBeDefined();
      }
    }
    const api = named(docs, "Deployment", "citadel-api");
    const apiC = arr(at(podSpecOf(api ?? {}), "containers"))[0];
    expect(at(apiC, "livenessProbe", "httpGet", "path")).toBe("/healthz");
    expect(at(apiC, "readinessProbe", "httpGet", "path")).toBe("/readyz");
    for (const d of workerDeployments(docs)) {
      const c = workerContainer(d);
      expect(at(c, "livenessProbe", "httpGet", "path")).toBe("/healthz");
      expect(at(c, "readinessProbe", "httpGet", "path")).toBe("/readyz");
      expect(at(c, "livenessProbe", "httpGet", "port")).toBe("metrics");
      expect(arr(c.ports).some((p) => at(p, "name") === "metrics" && at(p, "containerPort") === 9464)).toBe(true);
    }
  });

  it("has one KEDA ScaledObject per model queue on its BullMQ wait list, scaling to zero", () => {
    const prefix = configMapData(docs, "citadel-config").CITADEL_PREFIX ?? "{citadel}";
    expect(prefix).toBe("{citadel}");
    const scaled = docs.filter((d) => d.kind === "ScaledObject");
    const deployments = workerDeployments(docs);
    expect(deployments.length).toBe(MODELS.length);
    for (const d of deployments) {
      const model = envValue(workerContainer(d), "WORKER_MODELS");
      expect(MODELS as readonly string[], `${name(d)} WORKER_MODELS`).toContain(model);
      const so = scaled.find((s) => at(s, "spec", "scaleTargetRef", "name") === at(d, "metadata", "name"));
      expect(so, `ScaledObject for ${name(d)}`).toBeDefined();
      if (!so) continue;
      expect(at(so, "spec", "minReplicaCount")).toBe(0);
      expect(Number(at(so, "spec", "maxReplicaCount"))).toBeGreaterThan(0);
      // Both places a worker takes jobs from: the wait list and, for low-priority jobs,
      // BullMQ's prioritized set (a job there must wake a worker from zero too).
      const triggers = arr(at(so, "spec", "triggers")).filter((t) => at(t, "type") === "redis");
      expect(triggers.map((t) => at(t, "metadata", "listName")).sort(), `${name(so)} redis triggers`).toEqual(
        [keys.bull(prefix, String(model), "prioritized"), keys.bull(prefix, String(model), "wait")].sort(),
      );
      for (const redis of triggers) {
        expect(Number(at(redis, "metadata", "listLength"))).toBeGreaterThan(0);
        expect(str(at(redis, "metadata", "address"))).toMatch(/^citadel-redis\.citadel\.svc(\.cluster\.local)?:6379$/);
        const authName = at(redis, "authenticationRef", "name");
        expect(named(docs, "TriggerAuthentication", str(authName)), "TriggerAuthentication").toBeDefined();
      }
      // KEDA owns the replica count: a re-apply must not reset it.
      expect(at(d, "spec", "replicas"), `${name(d)} has no fixed replicas`).toBeUndefined();
    }
    for (const model of MODELS) {
      const hits = scaled.filter((s) =>
        arr(at(s, "spec", "triggers")).some((t) => at(t, "metadata", "listName") === keys.bull(prefix, model, "wait")),
      );
      expect(hits.length, `ScaledObjects reading infer-${model}`).toBe(1);
    }
  });

  it("gives workers a grace period just above SHUTDOWN_TIMEOUT_MS", () => {
    for (const d of workerDeployments(docs)) {
      const shutdownMs = Number(envValue(workerContainer(d), "SHUTDOWN_TIMEOUT_MS") ?? "30000");
      const grace = Number(at(podSpecOf(d), "terminationGracePeriodSeconds"));
      expect(grace * 1000, name(d)).toBeGreaterThan(shutdownMs);
      expect(grace * 1000 - shutdownMs, name(d)).toBeLessThanOrEqual(20_000);
    }
  });

  it("wires Vault Kubernetes auth for the worker service account", () => {
    const cfg = configMapData(docs, "citadel-vault-config");
    expect(cfg.KEY_PROVIDER).toBe("vault");
    expect(cfg.VAULT_AUTH).toBe("kubernetes");
    expect(cfg.VAULT_ADDR).toMatch(/^https:\/\//);
    const sa = named(docs, "ServiceAccount", "citadel-worker");
    expect(sa?.automountServiceAccountToken).toBe(false);
    for (const d of workerDeployments(docs)) {
      const pod = podSpecOf(d) ?? {};
      expect(pod.serviceAccountName).toBe("citadel-worker");
      const c = workerContainer(d);
      expect(envValue(c, "VAULT_K8S_ROLE")).toBe("citadel-worker");
      const tokenVol = arr(pod.volumes).find((v) =>
        arr(at(v, "projected", "sources")).some((s) => at(s, "serviceAccountToken", "audience") === "vault"),
      );
      expect(tokenVol, `${name(d)} projected vault token`).toBeDefined();
      const src = arr(at(tokenVol, "projected", "sources")).find((s) => at(s, "serviceAccountToken"));
      expect(Number(at(src, "serviceAccountToken", "expirationSeconds"))).toBeLessThanOrEqual(3600);
      const mount = arr(c.volumeMounts).find((m) => at(m, "name") === at(tokenVol, "name"));
      expect(`${str(at(mount, "mountPath"))}/${str(at(src, "serviceAccountToken", "path"))}`).toBe(
        cfg.VAULT_K8S_JWT_PATH,
      );
    }
    const crb = docs.find(
      (d) => d.kind === "ClusterRoleBinding" && at(d, "roleRef", "name") === "system:auth-delegator",
    );
    expect(crb, "TokenReview delegation for Vault").toBeDefined();
  });

  it("mounts the model store read-only in API and workers, with pinned signers", () => {
    for (const d of [...workerDeployments(docs), named(docs, "Deployment", "citadel-api")]) {
      if (!d) throw new Error("api deployment missing");
      const pod = podSpecOf(d) ?? {};
      const models = arr(pod.volumes).find((v) => at(v, "persistentVolumeClaim", "claimName") === "citadel-models");
      expect(at(models, "persistentVolumeClaim", "readOnly"), name(d)).toBe(true);
      const c = arr(pod.containers).filter(isObj)[0] ?? {};
      const mount = arr(c.volumeMounts).find((m) => at(m, "name") === at(models, "name"));
      expect(at(mount, "readOnly"), name(d)).toBe(true);
      expect(
        arr(c.volumeMounts).some((m) => at(m, "mountPath") === "/tmp"),
        `${name(d)} /tmp`,
      ).toBe(true);
    }
    expect(configMapData(docs, "citadel-config").TRUSTED_SIGNERS).toMatch(/^\/etc\/citadel\/signers\//);
  });

  it("isolates the namespace with NetworkPolicies", () => {
    const policies = docs.filter((d) => d.kind === "NetworkPolicy");
    const deny = policies.find(
      (p) =>
        Object.keys((at(p, "spec", "podSelector") as Obj | undefined) ?? {}).length === 0 &&
        arr(at(p, "spec", "policyTypes")).includes("Ingress") &&
        arr(at(p, "spec", "policyTypes")).includes("Egress") &&
        at(p, "spec", "ingress") === undefined &&
        at(p, "spec", "egress") === undefined,
    );
    expect(deny, "default deny-all").toBeDefined();
    // Only the API accepts traffic from outside the namespace without a `from` restriction.
    const open = policies.filter((p) => arr(at(p, "spec", "ingress")).some((r) => at(r, "from") === undefined));
    expect(open.map((p) => at(p, "spec", "podSelector", "matchLabels", "app.kubernetes.io/component"))).toEqual([
      "api",
    ]);
    // Workers reach Redis, Vault, the model store and DNS only.
    const worker = policies.find(
      (p) => at(p, "spec", "podSelector", "matchLabels", "app.kubernetes.io/component") === "worker",
    );
    expect(worker).toBeDefined();
    const ports = arr(at(worker, "spec", "egress")).flatMap((r) =>
      arr(at(r, "ports")).map((p) => Number(at(p, "port"))),
    );
    expect(new Set(ports)).toEqual(new Set([6379, 8200, 2049, 443]));
    for (const r of arr(at(worker, "spec", "egress"))) {
      expect(at(r, "to"), "worker egress rule without a destination").toBeDefined();
      for (const to of arr(at(r, "to"))) expect(at(to, "ipBlock"), "no open ipBlock").toBeUndefined();
    }
    const redisPolicy = policies.find(
      (p) => at(p, "spec", "podSelector", "matchLabels", "app.kubernetes.io/component") === "redis",
    );
    expect(at(redisPolicy, "spec", "egress")).toEqual([]);
  });

  it("caps the namespace with a ResourceQuota, a LimitRange and PDBs", () => {
    const quota = docs.find((d) => d.kind === "ResourceQuota");
    expect(at(quota, "spec", "hard", "requests.nvidia.com/gpu")).toBeDefined();
    expect(at(quota, "spec", "hard", "pods")).toBeDefined();
    const lr = docs.find((d) => d.kind === "LimitRange");
    const container = arr(at(lr, "spec", "limits")).find((l) => at(l, "type") === "Container");
    expect(at(container, "default", "memory")).toBeDefined();
    expect(at(container, "max", "memory")).toBeDefined();
    const pdbs = docs.filter((d) => d.kind === "PodDisruptionBudget");
    for (const d of [named(docs, "Deployment", "citadel-api"), ...workerDeployments(docs)]) {
      const labels = (at(d, "spec", "template", "metadata", "labels") as Obj | undefined) ?? {};
      const pdb = pdbs.find((p) => {
        const sel = (at(p, "spec", "selector", "matchLabels") as Obj | undefined) ?? {};
        return Object.entries(sel).every(([k, v]) => labels[k] === v);
      });
      expect(pdb, `PDB covering ${name(d ?? {})}`).toBeDefined();
    }
  });

  it("routes /v1, /v2 and /admin/queues through the Ingress, each taking the bodies the API takes there", () => {
    const api = named(docs, "Deployment", "citadel-api");
    const container = arr(at(podSpecOf(api ?? {}), "containers")).find((c) => at(c, "name") === "api");
    const set = (k: string) => (isObj(container) ? envValue(container, k) : undefined);
    const limits = ApiEnv.parse(
      Object.fromEntries(
        ["BODY_LIMIT_BYTES", "BATCH_MAX_BYTES"].flatMap((k) => (set(k) === undefined ? [] : [[k, set(k)]])),
      ),
    );
    const routes = docs
      .filter((d) => d.kind === "Ingress")
      .flatMap((ing) =>
        arr(at(ing, "spec", "rules")).flatMap((r) =>
          arr(at(r, "http", "paths")).map((p) => ({
            path: str(at(p, "path")),
            annotations: (at(ing, "metadata", "annotations") as Obj | undefined) ?? {},
          })),
        ),
      );
    // The route a request takes: the longest prefix among the Ingress paths (nginx's rule).
    const routeOf = (url: string) =>
      routes
        .filter((r) => url === r.path || url.startsWith(`${r.path}/`))
        .sort((a, b) => b.path.length - a.path.length)[0];
    const bodySize = (url: string) =>
      nginxBytes(str(routeOf(url)?.annotations["nginx.ingress.kubernetes.io/proxy-body-size"] ?? "1m"));
    for (const url of ["/v1/jobs", "/v1/jobs/bulk", "/v2/models/m/infer", "/admin/queues/api/queues"])
      expect(routeOf(url), url).toBeDefined();
    expect(bodySize("/v1/jobs")).toBeGreaterThanOrEqual(limits.BODY_LIMIT_BYTES);
    expect(bodySize("/v2/models/m/infer")).toBeGreaterThanOrEqual(limits.BODY_LIMIT_BYTES);
    // A batch file may be far larger: its own route, streamed to the API (which bounds it while reading)...
    expect(bodySize("/v1/batches")).toBeGreaterThanOrEqual(limits.BATCH_MAX_BYTES);
    expect(routeOf("/v1/batches")?.annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"]).toBe("off");
    // ...while the job routes keep the small bound at the edge.
    expect(bodySize("/v1/jobs")).toBeLessThan(limits.BATCH_MAX_BYTES);
  });

  it("sizes every container, init containers included, within the LimitRange (admission refuses a pod outside it)", () => {
    const lr = docs.find((d) => d.kind === "LimitRange");
    const bounds = arr(at(lr, "spec", "limits")).find((l) => at(l, "type") === "Container");
    const bad: string[] = [];
    for (const w of workloads(docs)) {
      for (const c of containersOf(podSpecOf(w) ?? {})) {
        for (const resource of ["cpu", "memory", "ephemeral-storage"]) {
          const request = at(c, "resources", "requests", resource);
          const limit = at(c, "resources", "limits", resource);
          const min = at(bounds, "min", resource);
          const max = at(bounds, "max", resource);
          const where = `${name(w)} ${str(at(c, "name"))} ${resource}`;
          for (const [what, v] of [
            ["request", request],
            ["limit", limit],
          ] as const) {
            if (v === undefined) continue;
            if (min !== undefined && quantity(v) < quantity(min))
              bad.push(`${where} ${what} ${String(v)} < min ${String(min)}`);
            if (max !== undefined && quantity(v) > quantity(max))
              bad.push(`${where} ${what} ${String(v)} > max ${String(max)}`);
          }
        }
      }
    }
    expect(bad).toEqual([]);
  });

  it("keeps the API away from Vault and the cluster: no token, no route; webhooks reach public https only", () => {
    const api = named(docs, "Deployment", "citadel-api");
    const pod = podSpecOf(api ?? {}) ?? {};
    expect(arr(pod.volumes).some((v) => at(v, "projected") !== undefined)).toBe(false);
    const policy = docs.find(
      (d) =>
        d.kind === "NetworkPolicy" &&
        at(d, "spec", "podSelector", "matchLabels", "app.kubernetes.io/component") === "api",
    );
    const rules = arr(at(policy, "spec", "egress"));
    const portsOf = (r: unknown) => arr(at(r, "ports")).map((p) => Number(at(p, "port")));
    expect(rules.flatMap(portsOf).sort()).toEqual([443, 6379]);
    // Redis by pod; nothing else in the cluster (no namespace selector: not Vault's).
    for (const r of rules) for (const to of arr(at(r, "to"))) expect(at(to, "namespaceSelector")).toBeUndefined();
    const redis = rules.find((r) => portsOf(r).includes(6379));
    expect(arr(at(redis, "to")).map((t) => at(t, "podSelector", "matchLabels", "app.kubernetes.io/component"))).toEqual(
      ["redis"],
    );
    // Webhook deliveries: https to public addresses only, the private, loopback,
    // link-local and CGNAT ranges (where the cluster's own pods and services live) excepted.
    const webhooks = rules.find((r) => portsOf(r).includes(443));
    expect(portsOf(webhooks)).toEqual([443]);
    const blocks = arr(at(webhooks, "to")).map((t) => at(t, "ipBlock"));
    expect(blocks.map((b) => at(b, "cidr")).sort()).toEqual(["0.0.0.0/0", "::/0"]);
    const v4 = blocks.find((b) => at(b, "cidr") === "0.0.0.0/0");
    for (const range of [
      "10.0.0.0/8",
      "172.16.0.0/12",
      "192.168.0.0/16",
      "169.254.0.0/16",
      "127.0.0.0/8",
      "100.64.0.0/10",
    ])
      expect(arr(at(v4, "except")), range).toContain(range);
    const v6 = blocks.find((b) => at(b, "cidr") === "::/0");
    for (const range of ["::1/128", "fc00::/7", "fe80::/10", "::ffff:0:0/96"])
      expect(arr(at(v6, "except")), range).toContain(range);
  });

  it("enforces the restricted Pod Security Standard on the namespace", () => {
    const ns = named(docs, "Namespace", "citadel");
    expect(at(ns, "metadata", "labels", "pod-security.kubernetes.io/enforce")).toBe("restricted");
  });

  it("runs Redis with AOF and noeviction", () => {
    const sts = docs.find((d) => d.kind === "StatefulSet" && str(at(d, "metadata", "name")).includes("redis"));
    expect(sts).toBeDefined();
    const conf = RENDERER
      ? (configMapData(docs, "citadel-redis-config")["redis.conf"] ?? "")
      : readFileSync(path.join(INFRA, "k8s/base/redis.conf"), "utf8");
    const c = redisConf(conf);
    expect(c.get("appendonly")).toBe("yes");
    expect(c.get("maxmemory-policy")).toBe("noeviction");
    expect(c.get("maxmemory")).toMatch(/^\d+[kmg]b$/i);
  });
});

describe(`k8s GPU vs CPU workers (${how})`, () => {
  const gpuPatch = readFileSync(path.join(INFRA, "k8s/overlays/gpu/kustomization.yaml"), "utf8");

  it("gpu overlay: each worker requests one nvidia.com/gpu on GPU nodes", () => {
    const { docs, rendered } = renderOverlay("gpu");
    if (!rendered) {
      for (const s of ['nvidia.com/gpu: "1"', "nodeSelector:", "tolerations:", 'REQUIRE_GPU, value: "true"']) {
        expect(gpuPatch).toContain(s);
      }
      return;
    }
    const workers = docs.filter(
      (d) => d.kind === "Deployment" && at(d, "metadata", "labels", "app.kubernetes.io/component") === "worker",
    );
    expect(workers.length).toBe(MODELS.length);
    for (const d of workers) {
      const pod = podSpecOf(d) ?? {};
      const c =
        arr(pod.containers)
          .filter(isObj)
          .find((x) => x.name === "worker") ?? {};
      expect(String(at(c, "resources", "limits", "nvidia.com/gpu")), name(d)).toBe("1");
      expect(String(at(c, "resources", "requests", "nvidia.com/gpu")), name(d)).toBe("1");
      expect(Object.keys((pod.nodeSelector as Obj | undefined) ?? {}), `${name(d)} nodeSelector`).toContain(
        "nvidia.com/gpu.present",
      );
      expect(
        arr(pod.tolerations).some((t) => at(t, "key") === "nvidia.com/gpu" && at(t, "effect") === "NoSchedule"),
        `${name(d)} tolerations`,
      ).toBe(true);
      expect(envValue(c, "REQUIRE_GPU")).toBe("true");
      expect(envValue(c, "EXECUTION_PROVIDERS")).toBe("tensorrt,cuda,cpu");
      expect(str(c.image)).toMatch(/worker-gpu:/);
      // the tighter Localhost seccomp profile on the GPU pool
      expect(at(c, "securityContext", "seccompProfile")).toEqual({
        type: "Localhost",
        localhostProfile: "profiles/citadel-node.json",
      });
    }
    // API and Redis stay off GPU nodes
    for (const d of docs.filter((x) => x.kind === "Deployment" || x.kind === "StatefulSet")) {
      if (at(d, "metadata", "labels", "app.kubernetes.io/component") === "worker") continue;
      for (const c of arr(at(podSpecOf(d), "containers"))) {
        expect(at(c, "resources", "limits", "nvidia.com/gpu"), name(d)).toBeUndefined();
      }
    }
  });

  it("cpu overlay: workers run the CPU provider and request no GPU", () => {
    const { docs, rendered } = renderOverlay("cpu");
    const workers = docs.filter(
      (d) => d.kind === "Deployment" && at(d, "metadata", "labels", "app.kubernetes.io/component") === "worker",
    );
    for (const d of workers) {
      const pod = podSpecOf(d) ?? {};
      const c = arr(pod.containers).filter(isObj)[0] ?? {};
      expect(at(c, "resources", "limits", "nvidia.com/gpu")).toBeUndefined();
      expect(pod.nodeSelector).toBeUndefined();
      if (rendered) expect(envValue(c, "EXECUTION_PROVIDERS")).toBe("cpu");
    }
  });
});

describe("seccomp Localhost profile", () => {
  const profile = JSON.parse(readFileSync(path.join(INFRA, "seccomp/citadel-node.json"), "utf8")) as unknown;

  it("is an allow-list that denies escape and introspection syscalls", () => {
    expect(at(profile, "defaultAction")).toBe("SCMP_ACT_ERRNO");
    const allowed = new Set(
      arr(at(profile, "syscalls"))
        .filter((s) => at(s, "action") === "SCMP_ACT_ALLOW" && at(s, "args") === undefined)
        .flatMap((s) => arr(at(s, "names")).map(str)),
    );
    for (const needed of ["read", "write", "mmap", "futex", "epoll_wait", "ioctl", "openat", "socket", "execve"]) {
      expect(allowed, needed).toContain(needed);
    }
    for (const denied of [
      "ptrace",
      "bpf",
      "mount",
      "umount2",
      "unshare",
      "setns",
      "keyctl",
      "add_key",
      "perf_event_open",
      "userfaultfd",
      "io_uring_setup",
      "process_vm_readv",
      "init_module",
      "kexec_load",
      "setuid",
      "capset",
      "chroot",
      "pivot_root",
      "clone",
    ]) {
      expect(allowed, denied).not.toContain(denied);
    }
    const clone = arr(at(profile, "syscalls")).find((s) => arr(at(s, "names")).includes("clone"));
    expect(at(clone, "args", 0, "op")).toBe("SCMP_CMP_MASKED_EQ");
  });
});

/** The pod-level identity of each role; Redis runs as its image's redis user. */
const K8S_IDS: Record<string, number> = {
  api: roleIds().api ?? -1,
  worker: roleIds().worker ?? -1,
  publisher: roleIds().publisher ?? -1,
  redis: 999,
};

function component(o: Obj): string {
  return str(at(o, "spec", "template", "metadata", "labels", "app.kubernetes.io/component"));
}

/**
 * A container's environment as the kubelet would build it: envFrom ConfigMaps, then env
 * (literals, `$(VAR)` expanded); Secret and field references become placeholders.
 */
function containerEnv(docs: Obj[], c: Obj): Record<string, string> {
  const env: Record<string, string> = {};
  for (const from of arr(c.envFrom)) {
    expect(at(from, "secretRef"), "no whole Secret in the environment").toBeUndefined();
    const ref = str(at(from, "configMapRef", "name"));
    const data = configMapData(docs, ref);
    if (Object.keys(data).length === 0) throw new Error(`envFrom ConfigMap ${ref} is not rendered`);
    Object.assign(env, data);
  }
  for (const e of arr(c.env)) {
    const key = str(at(e, "name"));
    const v = at(e, "value");
    if (typeof v === "string") env[key] = v.replace(/\$\(([A-Z0-9_]+)\)/g, (_m, ref: string) => env[ref] ?? "");
    else if (at(e, "valueFrom", "secretKeyRef")) env[key] = `secret-${str(at(e, "valueFrom", "secretKeyRef", "key"))}`;
    else env[key] = "from-field";
  }
  return env;
}

function citadelContainers(docs: Obj[], comp: string): { pod: Obj; c: Obj; w: Obj }[] {
  return workloads(docs)
    .filter((w) => component(w) === comp)
    .flatMap((w) => {
      const pod = podSpecOf(w) ?? {};
      return arr(pod.containers)
        .filter(isObj)
        .map((c) => ({ pod, c, w }));
    });
}

describe.each(["base", ...OVERLAYS] as const)(`k8s %s: roles, Vault, audit keys, core dumps (${how})`, (overlay) => {
  const { docs, rendered } = renderOverlay(overlay);
  const roles = overlay === "base" ? ["api", "worker", "redis"] : ["api", "worker", "publisher", "redis"];

  it("puts every namespaced object, components' included, in namespace citadel", () => {
    if (!rendered) {
      // Structural: the base and each overlay set it (components get it from the overlay).
      const dir = overlay === "base" ? "k8s/base" : `k8s/overlays/${overlay}`;
      expect(readFileSync(path.join(INFRA, dir, "kustomization.yaml"), "utf8")).toMatch(/^namespace: citadel$/m);
      return;
    }
    for (const d of docs) {
      if (["Namespace", "ClusterRole", "ClusterRoleBinding"].includes(str(d.kind))) continue;
      expect(at(d, "metadata", "namespace"), name(d)).toBe("citadel");
    }
  });

  it("runs each role as its own uid, gid and fsGroup", () => {
    const seen = new Map<string, string>();
    for (const w of workloads(docs)) {
      const comp = component(w);
      const sc = (at(podSpecOf(w), "securityContext") as Obj | undefined) ?? {};
      const id = `${String(sc.runAsUser)}:${String(sc.runAsGroup)}:${String(sc.fsGroup)}`;
      expect(id, `${name(w)} (${comp})`).toBe(`${K8S_IDS[comp]}:${K8S_IDS[comp]}:${K8S_IDS[comp]}`);
      for (const c of containersOf(podSpecOf(w) ?? {})) {
        expect(at(c, "securityContext", "runAsUser"), `${name(w)} container uid`).toBeUndefined();
        expect(at(c, "securityContext", "runAsGroup"), `${name(w)} container gid`).toBeUndefined();
      }
      seen.set(comp, id);
    }
    expect([...seen.keys()].sort()).toEqual([...roles].sort());
    expect(new Set(seen.values()).size, [...seen].join(", ")).toBe(seen.size);
  });

  it("gives the API no Vault settings, identity, token or route", async () => {
    const api = named(docs, "Deployment", "citadel-api");
    const pod = podSpecOf(api ?? {}) ?? {};
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(named(docs, "ServiceAccount", str(pod.serviceAccountName))?.automountServiceAccountToken).toBe(false);
    for (const v of arr(pod.volumes)) {
      expect(at(v, "projected"), `api volume ${str(at(v, "name"))}: no projected token`).toBeUndefined();
      expect(JSON.stringify(v), "api volume").not.toMatch(/vault/i);
    }
    const c = arr(pod.containers).filter(isObj)[0] ?? {};
    const env = containerEnv(docs, c);
    expect(Object.keys(env).filter((k) => /^VAULT_|^KEY_PROVIDER$|^NODE_EXTRA_CA_CERTS$/.test(k))).toEqual([]);
    const { ApiEnv } = await import("@citadel/api");
    expect(ApiEnv.safeParse(env).error?.issues ?? [], "the API's env parses as it is rendered").toEqual([]);
  });

  it("gives workers (and the publisher) the Vault settings their env schemas need", async () => {
    const { WorkerEnv } = await import("@citadel/worker");
    const { CliEnv } = await import("@citadel/cli/context");
    for (const { c, w } of citadelContainers(docs, "worker")) {
      const env = containerEnv(docs, c);
      expect(env.KEY_PROVIDER, name(w)).toBe("vault");
      expect(WorkerEnv.safeParse(env).error?.issues ?? [], name(w)).toEqual([]);
    }
    for (const { c, w } of citadelContainers(docs, "publisher")) {
      expect(CliEnv.safeParse(containerEnv(docs, c)).error?.issues ?? [], name(w)).toEqual([]);
    }
  });

  it("mounts each audit writer's own key file (Secret citadel-audit-<role>, mode 0400), no other role's", () => {
    for (const role of roles.filter((r) => r !== "redis")) {
      for (const { pod, c, w } of citadelContainers(docs, role)) {
        const file = envValue(c, "AUDIT_KEY_FILE") ?? "";
        const mount = arr(c.volumeMounts).find((m) => file.startsWith(`${str(at(m, "mountPath"))}/`));
        expect(mount, `${name(w)} mounts AUDIT_KEY_FILE ${file}`).toBeDefined();
        const vol = arr(pod.volumes).find((v) => at(v, "name") === at(mount, "name"));
        expect(at(vol, "secret", "secretName"), name(w)).toBe(`citadel-audit-${role}`);
        expect(at(vol, "secret", "defaultMode"), name(w)).toBe(0o400);
        expect(file.slice(str(at(mount, "mountPath")).length + 1), name(w)).toBe("audit-key");
        const audits = arr(pod.volumes)
          .map((v) => str(at(v, "secret", "secretName")))
          .filter((s) => s.startsWith("citadel-audit-"));
        expect(audits, name(w)).toEqual([`citadel-audit-${role}`]);
      }
    }
  });

  it("mounts the webhook key into the API only (Secret citadel-webhook-key, mode 0400): webhooks on as shipped", () => {
    for (const role of roles) {
      for (const { pod, c, w } of citadelContainers(docs, role)) {
        const file = envValue(c, "WEBHOOK_KEY_FILE");
        const secrets = arr(pod.volumes).map((v) => str(at(v, "secret", "secretName")));
        if (role !== "api") {
          expect(file, name(w)).toBeUndefined();
          expect(secrets, name(w)).not.toContain("citadel-webhook-key");
          continue;
        }
        const mount = arr(c.volumeMounts).find((m) => (file ?? "").startsWith(`${str(at(m, "mountPath"))}/`));
        expect(mount, `${name(w)} mounts WEBHOOK_KEY_FILE ${String(file)}`).toBeDefined();
        const vol = arr(pod.volumes).find((v) => at(v, "name") === at(mount, "name"));
        expect(at(vol, "secret", "secretName"), name(w)).toBe("citadel-webhook-key");
        expect(at(vol, "secret", "defaultMode"), name(w)).toBe(0o400);
      }
    }
  });

  it("starts every container under `ulimit -c 0` (no pod-level rlimit exists)", () => {
    for (const role of roles) {
      for (const { c, w } of citadelContainers(docs, role)) {
        const cmd = arr(c.command).map(str);
        expect(cmd.slice(0, 2), `${name(w)} command`).toEqual(["/bin/sh", "-c"]);
        expect(cmd[2], name(w)).toMatch(/^ulimit -c 0 && exec /);
      }
    }
  });

  it("runs the API and the workers with the service Node flags (SERVICE_NODE_FLAGS)", () => {
    const seen = new Set<string>();
    for (const role of roles) {
      for (const { c, w } of citadelContainers(docs, role)) {
        const cmd = str(arr(c.command)[2]);
        const app = /exec node (?:\S+ )*apps\/(api|worker)\/dist\/main\.js$/.exec(cmd)?.[1];
        if (!app) continue;
        seen.add(app);
        expect(cmd, name(w)).toBe(`ulimit -c 0 && exec node ${SERVICE_NODE_FLAGS.join(" ")} apps/${app}/dist/main.js`);
      }
    }
    expect([...seen].sort()).toEqual(["api", "worker"]);
  });

  it(`keeps MAX_TENANT_QUEUED_BYTES × ${QUOTA_FACTOR_TEXT} below Redis maxmemory, and TTLs short`, () => {
    const api = named(docs, "Deployment", "citadel-api");
    const c = arr(at(podSpecOf(api ?? {}), "containers")).filter(isObj)[0] ?? {};
    const env = containerEnv(docs, c);
    const quota = Number(env.MAX_TENANT_QUEUED_BYTES);
    expect(Number.isInteger(quota) && quota > 0, "MAX_TENANT_QUEUED_BYTES is set explicitly").toBe(true);
    const conf = RENDERER
      ? (configMapData(docs, "citadel-redis-config")["redis.conf"] ?? "")
      : readFileSync(path.join(INFRA, "k8s/base/redis.conf"), "utf8");
    const maxmemory = redisBytes(redisConf(conf).get("maxmemory") ?? "");
    expect(quota * QUOTA_FACTOR).toBeLessThan(maxmemory);
    // Redis itself fits in its container (AOF rewrites fork: keep headroom).
    const redis = citadelContainers(docs, "redis")[0]?.c ?? {};
    const limit = str(at(redis, "resources", "limits", "memory"));
    const limitBytes = Number(/^(\d+)Gi$/.exec(limit)?.[1]) * 1024 ** 3;
    expect(maxmemory, `maxmemory vs container limit ${limit}`).toBeLessThan(limitBytes);
    expectSaneTtls(Number(env.RESULT_TTL_MS), Number(env.FAILED_TTL_MS));
  });
});
