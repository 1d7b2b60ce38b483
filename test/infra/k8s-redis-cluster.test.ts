import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { CommonEnv, parseEnv } from "@citadel/config";
import { keys, redisEndpoint } from "@citadel/queue";
import { describe, expect, it } from "vitest";
import { tempDir } from "../support/temp-dirs.js";
import {
  arr,
  at,
  configMapData,
  containersOf,
  envValue,
  INFRA,
  isObj,
  KUBECTL,
  KUSTOMIZE,
  MODELS,
  type Obj,
  parseYamlDocs,
  podSpecOf,
  RENDERER,
  str,
  workloads,
} from "./support.js";

// Issue 14 point 2: the Redis Cluster variant of the k8s manifests, component
// infra/k8s/components/redis-cluster on top of an overlay, as an operator would add it.

const tmp = tempDir("k8s-cluster");

/** The cpu overlay with the component added, rendered by kustomize (it refuses absolute paths). */
function renderClusterVariant(): Obj[] {
  const rel = (p: string) => path.relative(tmp, path.join(INFRA, "k8s", p));
  writeFileSync(
    path.join(tmp, "kustomization.yaml"),
    [
      "apiVersion: kustomize.config.k8s.io/v1beta1",
      "kind: Kustomization",
      "namespace: citadel",
      "resources:",
      `  - ${rel("overlays/cpu")}`,
      "components:",
      `  - ${rel("components/redis-cluster")}`,
      "",
    ].join("\n"),
  );
  const out = KUBECTL
    ? execFileSync(KUBECTL, ["kustomize", tmp], { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 })
    : execFileSync(KUSTOMIZE ?? "kustomize", ["build", tmp], { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  return parseYamlDocs(out, "kustomize cpu + redis-cluster").filter(isObj);
}

describe.skipIf(!RENDERER)("k8s Redis Cluster variant (components/redis-cluster on the cpu overlay)", () => {
  const docs = RENDERER ? renderClusterVariant() : [];
  const config = configMapData(docs, "citadel-config");
  const nodes = config.REDIS_CLUSTER_NODES ?? "";

  it("gives every Citadel process REDIS_CLUSTER_NODES, which the config schema accepts beside each role's REDIS_URL", () => {
    expect(nodes.split(",").length).toBeGreaterThanOrEqual(3);
    const citadel = workloads(docs).flatMap((w) =>
      containersOf(podSpecOf(w) ?? {}).filter((c) => envValue(c, "REDIS_URL") !== undefined),
    );
    // The API, both worker Deployments and the sample publisher.
    expect(citadel.length).toBeGreaterThanOrEqual(4);
    for (const c of citadel) {
      const refs = arr(c.envFrom).map((e) => str(at(e, "configMapRef", "name")));
      expect(
        refs.some((r) => r.startsWith("citadel-config")),
        str(c.name),
      ).toBe(true);
      const url = (envValue(c, "REDIS_URL") ?? "").replace("$(REDIS_PASSWORD)", "pw");
      const env = parseEnv(CommonEnv, { REDIS_URL: url, REDIS_CLUSTER_NODES: nodes });
      const ep = redisEndpoint(env);
      expect(ep.nodes?.map((n) => `${n.host}:${n.port}`).join(","), str(c.name)).toBe(nodes);
      expect(ep.password).toBe("pw");
    }
  });

  it("switches each queue's KEDA triggers to redis-cluster with the same addresses, lists and targets", () => {
    const scaled = docs.filter((d) => d.kind === "ScaledObject");
    expect(scaled.map((s) => str(at(s, "metadata", "labels", "citadel.io/model"))).sort()).toEqual([...MODELS].sort());
    for (const s of scaled) {
      const model = str(at(s, "metadata", "labels", "citadel.io/model"));
      const triggers = arr(at(s, "spec", "triggers"));
      expect(triggers.map((t) => at(t, "metadata", "listName")).sort()).toEqual(
        [keys.bull("{citadel}", model, "prioritized"), keys.bull("{citadel}", model, "wait")].sort(),
      );
      for (const t of triggers) {
        expect(at(t, "type")).toBe("redis-cluster");
        expect(at(t, "metadata", "addresses")).toBe(nodes);
        expect(Number(at(t, "metadata", "listLength"))).toBeGreaterThan(0);
        expect(at(t, "metadata", "username")).toBe("keda");
        // The single-Redis scaler's fields are gone (the cluster scaler rejects databaseIndex).
        expect(at(t, "metadata", "address")).toBeUndefined();
        expect(at(t, "metadata", "databaseIndex")).toBeUndefined();
        expect(at(t, "authenticationRef", "name")).toBe("citadel-redis");
      }
    }
    const auth = docs.find((d) => d.kind === "TriggerAuthentication" && at(d, "metadata", "name") === "citadel-redis");
    expect(arr(at(auth, "spec", "secretTargetRef")).map((r) => at(r, "parameter"))).toEqual(["password"]);
  });

  it("drops the single Redis and lets the cluster's nodes reach each other on the bus port", () => {
    const single = docs.filter(
      (d) => (d.kind === "StatefulSet" || d.kind === "Service") && at(d, "metadata", "name") === "citadel-redis",
    );
    expect(single).toEqual([]);
    const bus = docs.find(
      (d) => d.kind === "NetworkPolicy" && at(d, "metadata", "name") === "citadel-redis-cluster-bus",
    );
    const ports = arr(at(bus, "spec", "ingress", 0, "ports")).map((p) => at(p, "port"));
    expect(ports).toEqual([6379, 16379]);
    // citadel-redis still admits the fleet and KEDA on the client port.
    expect(docs.some((d) => d.kind === "NetworkPolicy" && at(d, "metadata", "name") === "citadel-redis")).toBe(true);
  });
});
