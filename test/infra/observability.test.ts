import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { buildConvNet } from "@citadel/onnx";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { b64, startTestFleet } from "../support/fleet.js";
import { startVaultTestFleet } from "../support/vault-fleet.js";
import type { VaultTestServer } from "../support/vault-server/index.js";
import { metricsIn } from "./promql.js";
import {
  arr,
  at,
  containersOf,
  envValue,
  INFRA,
  isObj,
  loadCompose,
  named,
  type Obj,
  parseYamlDocs,
  podSpecOf,
  ROOT,
  read,
  str,
  which,
} from "./support.js";

/**
 * Metrics a rule or panel may read that no Citadel process exports, each with its
 * source. Listed by prefix (or exact name) so nothing of Citadel's own can hide here.
 */
const EXTERNAL: { match: string; exact?: true; source: string }[] = [
  { match: "DCGM_FI_", source: "NVIDIA DCGM exporter on GPU nodes" },
  { match: "kube_", source: "kube-state-metrics" },
  { match: "up", exact: true, source: "Prometheus, one per scrape target" },
];
const isExternal = (name: string) => EXTERNAL.some((e) => (e.exact ? name === e.match : name.startsWith(e.match)));

/**
 * The sample names a Prometheus text exposition offers: every declared metric (`# TYPE`,
 * so a labelled series that has not been touched yet still counts) with the suffixes its
 * type implies, and every sample line.
 */
function exposedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split("\n")) {
    const t = /^# TYPE (\S+) (\S+)/.exec(line);
    if (t?.[1]) {
      const [, name, type] = t;
      names.add(name);
      if (type === "histogram") for (const s of ["_bucket", "_sum", "_count"]) names.add(`${name}${s}`);
      if (type === "summary") for (const s of ["_sum", "_count"]) names.add(`${name}${s}`);
    } else if (line && !line.startsWith("#")) {
      names.add(line.split(/[{ ]/)[0] ?? "");
    }
  }
  return names;
}

const rulesFile = YAML.parse(read("infra/prometheus/rules/citadel.rules.yml")) as unknown;
const rules = arr(at(rulesFile, "groups")).flatMap((g) => arr(at(g, "rules")).filter(isObj));
const alerts = rules.filter((r) => typeof r.alert === "string");
const recorded = new Set(rules.map((r) => str(r.record)).filter(Boolean));

describe("Prometheus", () => {
  it("scrapes the API and the workers and loads the rules", () => {
    const cfg = YAML.parse(read("infra/prometheus/prometheus.yml")) as unknown;
    const jobs = arr(at(cfg, "scrape_configs")).map((j) => str(at(j, "job_name")));
    expect(jobs).toEqual(expect.arrayContaining(["citadel-api", "citadel-worker", "citadel-k8s-pods"]));
    expect(arr(at(cfg, "rule_files")).map(str)).toContain("/etc/prometheus/rules/*.yml");
    const job = (name: string) => arr(at(cfg, "scrape_configs")).find((j) => at(j, "job_name") === name);
    expect(at(job("citadel-worker"), "dns_sd_configs", 0, "port")).toBe(9464);
    // The API's metrics listener, not its public port 8080.
    expect(at(job("citadel-api"), "static_configs", 0, "targets")).toEqual(["api:9465"]);
    // In a cluster only the ports named `metrics` are scraped (never the API's `http`).
    const keep = arr(at(job("citadel-k8s-pods"), "relabel_configs")).find(
      (r) => at(r, "source_labels", 0) === "__meta_kubernetes_pod_container_port_name",
    );
    expect(at(keep, "regex")).toBe("metrics");
    expect(at(job("dcgm-exporter"), "kubernetes_sd_configs", 0, "role")).toBe("pod");
  });

  it("scrapes the API on its metrics port, which compose and k8s serve and never publish", () => {
    const api = at(loadCompose(), "services", "api");
    expect(at(api, "environment", "METRICS_PORT")).toBe("9465");
    expect(arr(at(api, "ports")).map(str).join(" ")).not.toMatch(/9465/);
    const docs = parseYamlDocs(read("infra/k8s/base/api.yaml"), "api.yaml").filter(isObj);
    const c = containersOf(podSpecOf(named(docs, "Deployment", "citadel-api") ?? {}) ?? {})[0] ?? {};
    expect(envValue(c, "METRICS_PORT")).toBe("9465");
    expect(arr(c.ports)).toContainEqual({ name: "metrics", containerPort: 9465 });
    expect(JSON.stringify(named(docs, "Service", "citadel-api"))).not.toMatch(/metrics|9465/);
    const monitors = parseYamlDocs(read("infra/k8s/components/monitoring/podmonitors.yaml"), "podmonitors").filter(
      isObj,
    );
    for (const m of monitors)
      expect(at(m, "spec", "podMetricsEndpoints", 0, "port"), str(at(m, "metadata", "name"))).toBe("metrics");
    const policies = parseYamlDocs(read("infra/k8s/base/networkpolicies.yaml"), "networkpolicies").filter(isObj);
    const ingress = arr(at(named(policies, "NetworkPolicy", "citadel-api"), "spec", "ingress"));
    const metricsRule = ingress.find((r) => arr(at(r, "ports")).some((p) => at(p, "port") === 9465));
    expect(at(metricsRule, "from", 0, "namespaceSelector", "matchLabels")).toEqual({
      "kubernetes.io/metadata.name": "monitoring",
    });
  });

  it("reads metric names out of PromQL, not function, label or keyword names", () => {
    expect(
      metricsIn(
        'sum by (le, model) (rate(a_bucket{model=~"$model", x="y z"}[$__rate_interval])) / on (model) group_left clamp_min(b_total offset 1d, 1e-9) > bool 0.5',
      ).sort(),
    ).toEqual(["a_bucket", "b_total"]);
    expect(metricsIn('rate({__name__=~"c_(ok|bad)_total"}[5m]) and d:rec:max')).toEqual([
      "c_ok_total",
      "c_bad_total",
      "d:rec:max",
    ]);
    expect(metricsIn("label_values(citadel_queue_pending_jobs, model)")).toEqual(["citadel_queue_pending_jobs"]);
    expect(metricsIn("count by (job) (up == 1) unless deriv(x[10m:1m]) > 0")).toEqual(["up", "x"]);
  });

  it("alerts on probing, queues, failing models, open circuits, Vault and restarts", () => {
    const names = alerts.map((a) => str(a.alert));
    for (const a of [
      "CitadelTenantProbing",
      "CitadelTenantExtractionRate",
      "CitadelUnauthenticatedProbing",
      "CitadelQueueGrowing",
      "CitadelQueueOldestJobTooOld",
      "CitadelModelFailing",
      "CitadelModelLoadFailures",
      "CitadelCircuitOpen",
      "CitadelVaultUnreachable",
      "CitadelRunnerRestarts",
      "CitadelWorkerRestarting",
    ]) {
      expect(names, a).toContain(a);
    }
    for (const a of alerts) {
      expect(str(a.expr), str(a.alert)).not.toBe("");
      expect(at(a, "labels", "severity"), str(a.alert)).toMatch(/^(info|warning|critical)$/);
      expect(str(at(a, "annotations", "summary")), str(a.alert)).not.toBe("");
    }
    const byName = (n: string): string => str(alerts.find((a) => a.alert === n)?.expr);
    expect(byName("CitadelCircuitOpen")).toContain("citadel_circuit_state");
    expect(byName("CitadelCircuitOpen")).toContain("== 2");
    expect(byName("CitadelVaultUnreachable")).toContain("citadel_vault_up");
    expect(byName("CitadelTenantProbing")).toContain("citadel_api_rejections_total");
    // Extraction is measured in samples: a job may carry a whole batch (issue 10 point 4).
    expect(byName("CitadelTenantExtractionRate")).toContain("citadel_api_samples_total");
    expect(byName("CitadelTenantExtractionRate")).not.toContain("citadel_jobs_accepted_total");
    expect(byName("CitadelBoardLoginFailures")).toContain("citadel_board_denials_total");
    expect(byName("CitadelQueueOldestJobTooOld")).toContain("citadel_queue_oldest_waiting_seconds");
  });

  it("keeps the operator PrometheusRule identical to the rule file", () => {
    const pr = YAML.parse(read("infra/k8s/components/monitoring/prometheusrule.yaml")) as unknown;
    expect(at(pr, "kind")).toBe("PrometheusRule");
    // on mismatch: node test/infra/sync-prometheusrule.mjs
    expect(at(pr, "spec", "groups")).toEqual(at(rulesFile, "groups"));
  });
});

/** promtool from Debian's `prometheus` package (scripts/bootstrap.mjs installs it for the test suite). */
const PROMTOOL = which("promtool");
const NO_PROMTOOL =
  "promtool is not installed: run `node scripts/bootstrap.mjs test` as root (it apt-get installs Debian's prometheus) or install it yourself";
if (!PROMTOOL) process.stderr.write(`test/infra/observability.test.ts: SKIPPING the promtool checks: ${NO_PROMTOOL}\n`);
const RULES_TEST = "infra/prometheus/tests/citadel.rules.test.yml";

function promtool(...args: string[]): { code: number; out: string } {
  const r = spawnSync(PROMTOOL ?? "promtool", args, { cwd: ROOT, encoding: "utf8" });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

describe("promtool", () => {
  it(`checks the rule file${PROMTOOL ? "" : ` (SKIPPED: ${NO_PROMTOOL})`}`, (ctx) => {
    if (!PROMTOOL) return ctx.skip(NO_PROMTOOL);
    const r = promtool("check", "rules", "infra/prometheus/rules/citadel.rules.yml");
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(new RegExp(`SUCCESS: ${rules.length} rules found`));
  });

  it(`passes the alert unit tests${PROMTOOL ? "" : ` (SKIPPED: ${NO_PROMTOOL})`}`, (ctx) => {
    if (!PROMTOOL) return ctx.skip(NO_PROMTOOL);
    const r = promtool("test", "rules", RULES_TEST);
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/SUCCESS/);
  });

  it("has unit tests where every alert fires and where it does not", () => {
    const suite = YAML.parse(read(RULES_TEST)) as unknown;
    // The shipped rule file itself, not a copy.
    expect(arr(at(suite, "rule_files"))).toEqual(["../rules/citadel.rules.yml"]);
    // Every group in a fixed order (promtool's is random otherwise), recording rules first.
    const groups = arr(at(rulesFile, "groups")).map((g) => str(at(g, "name")));
    expect(arr(at(suite, "group_eval_order"))).toEqual(groups);
    expect(groups[0]).toBe("citadel.recording");
    const cases = arr(at(suite, "tests")).flatMap((t) => arr(at(t, "alert_rule_test")));
    const firing = new Set(
      cases.filter((c) => arr(at(c, "exp_alerts")).length > 0).map((c) => str(at(c, "alertname"))),
    );
    const quiet = new Set(
      cases.filter((c) => arr(at(c, "exp_alerts")).length === 0).map((c) => str(at(c, "alertname"))),
    );
    const missing = alerts.flatMap((a) => {
      const n = str(a.alert);
      return [...(firing.has(n) ? [] : [`${n}: no firing case`]), ...(quiet.has(n) ? [] : [`${n}: no quiet case`])];
    });
    expect(missing).toEqual([]);
  });
});

describe("Grafana dashboard", () => {
  const dash = JSON.parse(readFileSync(path.join(INFRA, "grafana/dashboards/citadel.json"), "utf8")) as unknown;
  const panels = arr(at(dash, "panels")).filter(isObj);
  const exprs = panels.flatMap((p: Obj) => arr(p.targets).map((t) => str(at(t, "expr"))));

  it("shows throughput, latency, batch size, queue depth and failures by reason", () => {
    expect(at(dash, "uid")).toBe("citadel-overview");
    const all = exprs.join("\n");
    expect(all).toMatch(/rate\(citadel_inference_request_success_total/);
    expect(all).toMatch(
      /histogram_quantile\(0\.99, sum by \(le, model\) \(rate\(citadel_inference_compute_duration_seconds_bucket/,
    );
    expect(all).toMatch(/citadel_inference_queue_duration_seconds_bucket/);
    expect(all).toMatch(/citadel_inference_count_total[\s\S]*\/[\s\S]*citadel_inference_exec_count_total/);
    expect(all).toMatch(/citadel_queue_pending_jobs/);
    expect(all).toMatch(/sum by \(model, reason\) \(rate\(citadel_inference_request_failure_total/);
    expect(all).toMatch(/sum by \(reason\) \(rate\(citadel_api_rejections_total/);
  });

  it("has a GPU row from the DCGM exporter: utilization and framebuffer memory per GPU", () => {
    const row = panels.findIndex((p) => p.type === "row" && /GPU/.test(str(p.title)));
    expect(row).toBeGreaterThan(-1);
    const gpu = panels.slice(row + 1).flatMap((p: Obj) => arr(p.targets).map((t) => str(at(t, "expr"))));
    const all = gpu.join("\n");
    expect(all).toMatch(/avg by \(Hostname, gpu\) \(DCGM_FI_DEV_GPU_UTIL/);
    expect(all).toMatch(/DCGM_FI_DEV_FB_USED/);
    expect(all).toMatch(/DCGM_FI_DEV_FB_FREE/);
    // The row reads only the exporter's series; Citadel's panels stay above it.
    for (const q of gpu) for (const m of metricsIn(q)) expect(m, q).toMatch(/^DCGM_FI_/);
  });

  it("lays panels out without ids colliding", () => {
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) expect(at(p, "gridPos", "w"), str(p.title)).toBeGreaterThan(0);
  });
});

function dashboard(): unknown {
  return JSON.parse(readFileSync(path.join(INFRA, "grafana/dashboards/citadel.json"), "utf8")) as unknown;
}

/** Every PromQL string in the dashboard: panel targets (rows included) and template-variable queries. */
function dashboardQueries(node: unknown, key = ""): string[] {
  if (typeof node === "string") return key === "expr" || key === "query" || key === "definition" ? [node] : [];
  if (Array.isArray(node)) return node.flatMap((n) => dashboardQueries(n, key));
  // A data-source variable's `query` is a data-source type ("prometheus"), not PromQL.
  if (isObj(node) && node.type === "datasource") return [];
  if (isObj(node)) return Object.entries(node).flatMap(([k, v]) => dashboardQueries(v, k));
  return [];
}

async function scrape(url: string): Promise<string> {
  const res = await fetch(`${url}/metrics`);
  expect(res.status, url).toBe(200);
  return res.text();
}

/**
 * The names are read from the processes themselves, not from a list: a real fleet (API
 * and a worker on the Vault key path) runs a job so lazily created series exist, then
 * its /metrics endpoints are scraped. A rule or panel on a metric nobody exports fails.
 */
describe("every metric an alert, a recording rule or a panel reads is exported", () => {
  let vault: VaultTestServer;
  let workerUrl = "";
  let apiUrl = "";
  let publicApiUrl = "";
  let close: () => Promise<void> = async () => undefined;
  const exported = new Set<string>();

  beforeAll(async () => {
    const started = await startVaultTestFleet({ workers: 1 });
    close = started.close;
    vault = started.vault;
    const { fleet } = started;
    workerUrl = fleet.workers[0]?.metricsUrl ?? "";
    apiUrl = fleet.apiMetricsUrl;
    publicApiUrl = fleet.apiUrl;
    await fleet.publish(buildConvNet(), { name: "conv", version: "1", spec: {} });
    const sub = await fleet.request("POST", "/v1/jobs", {
      model: "conv",
      inputs: { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(new Float32Array(3072).fill(0.1)) } },
    });
    expect(sub.status, JSON.stringify(sub.json)).toBe(202);
    let view = sub.json;
    while (view.status === "queued" || view.status === "active")
      view = (await fleet.request("GET", `/v1/jobs/${sub.json.id}?wait=10000`)).json;
    expect(view.status, JSON.stringify(view)).toBe("completed");
    for (const url of [fleet.apiMetricsUrl, ...fleet.workers.map((w) => w.metricsUrl)])
      for (const n of exposedNames(await scrape(url))) exported.add(n);
  });
  afterAll(async () => close());

  it("scraped the API's and the worker's own series", () => {
    for (const n of ["citadel_api_requests_total", "citadel_jobs_accepted_total", "citadel_inference_count_total"])
      expect(exported.has(n), n).toBe(true);
  });

  const known = (m: string) => exported.has(m) || recorded.has(m) || isExternal(m);

  it("serves /metrics only on the metrics listener, not on the public API", async () => {
    expect((await fetch(`${publicApiUrl}/metrics`)).status).toBe(404);
    expect(apiUrl).not.toBe(publicApiUrl);
  });

  it("alert and recording rules use only exported, recorded or listed external names", () => {
    const missing = rules.flatMap((r) =>
      metricsIn(str(r.expr))
        .filter((m) => !known(m))
        .map((m) => `${str(r.alert ?? r.record)} uses ${m}`),
    );
    expect(missing).toEqual([]);
  });

  it("dashboard panels and variables use only exported, recorded or listed external names", () => {
    const queries = dashboardQueries(dashboard());
    expect(queries.length).toBeGreaterThan(10);
    const missing = queries.flatMap((q) =>
      metricsIn(q)
        .filter((m) => !known(m))
        .map((m) => `${m} in ${q}`),
    );
    expect(missing).toEqual([]);
  });

  it("lists no external source that nothing reads, and none that Citadel itself exports", () => {
    const read = [...rules.map((r) => str(r.expr)), ...dashboardQueries(dashboard())].flatMap(metricsIn);
    for (const e of EXTERNAL) {
      const matches = (n: string) => (e.exact ? n === e.match : n.startsWith(e.match));
      expect(read.some(matches), `${e.match} (${e.source}) is read by a rule or panel`).toBe(true);
      expect([...exported].filter(matches), `${e.match} is exported by Citadel itself`).toEqual([]);
    }
  });

  it("the queue gauges carry the published model's series", async () => {
    const text = await scrape(apiUrl);
    expect(text).toMatch(/^citadel_queue_pending_jobs\{[^}]*model="conv"[^}]*\} \d/m);
    expect(text).toMatch(/^citadel_queue_oldest_waiting_seconds\{[^}]*model="conv"[^}]*\} \d/m);
  });

  it("a worker on Vault exports citadel_vault_up: 1 while Vault serves, 0 when sealed or down", async () => {
    const up = async () => {
      const m = /^citadel_vault_up(?:\{[^}]*\})? (\d+)$/m.exec(await scrape(workerUrl));
      return m ? Number(m[1]) : null;
    };
    expect(await up()).toBe(1);
    vault.setSealed(true);
    expect(await up()).toBe(0);
    vault.setSealed(false);
    expect(await up()).toBe(1);
    await vault.setDown("refuse");
    expect(await up()).toBe(0);
    await vault.setDown(false);
    expect(await up()).toBe(1);
  });

  it("a worker on the local keyring does not export citadel_vault_up (it uses no Vault)", async () => {
    const local = await startTestFleet({ workers: 1 });
    try {
      const text = await scrape(local.workers[0]?.metricsUrl ?? "");
      expect(text).toMatch(/^# TYPE citadel_inference_count_total counter/m);
      expect(text).not.toMatch(/citadel_vault_up/);
    } finally {
      await local.close();
    }
  });
});
