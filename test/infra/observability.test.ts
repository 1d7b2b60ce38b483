import { readFileSync } from "node:fs";
import path from "node:path";
import { buildConvNet } from "@citadel/onnx";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { b64, startTestFleet } from "../support/fleet.js";
import { startVaultTestFleet } from "../support/vault-fleet.js";
import type { VaultTestServer } from "../support/vault-server/index.js";
import { arr, at, INFRA, isObj, type Obj, read, str } from "./support.js";

/**
 * Metric names an expression reads: plain identifiers, and the names a
 * `{__name__=~"a_(x|y)_total"}` matcher selects (one alternation group, expanded).
 */
function metricsIn(expr: string): string[] {
  const out: string[] = [];
  const rest = expr.replace(/__name__=~?"([^"]*)"/g, (_m, re: string) => {
    const group = /\(([^()]*)\)/.exec(re);
    const names = group ? (group[1] ?? "").split("|").map((alt) => re.replace(group[0], alt)) : [re];
    out.push(...names);
    return "";
  });
  for (const m of rest.matchAll(/(?<![:\w])citadel_[a-z0-9_]+(?![:\w])/g)) out.push(m[0]);
  return out;
}

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
    const worker = arr(at(cfg, "scrape_configs")).find((j) => at(j, "job_name") === "citadel-worker");
    expect(at(worker, "dns_sd_configs", 0, "port")).toBe(9464);
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

  it("lays panels out without ids colliding", () => {
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) expect(at(p, "gridPos", "w"), str(p.title)).toBeGreaterThan(0);
  });
});

/** Every PromQL string in the dashboard: panel targets (rows included) and template-variable queries. */
function dashboardQueries(node: unknown, key = ""): string[] {
  if (typeof node === "string") return key === "expr" || key === "query" || key === "definition" ? [node] : [];
  if (Array.isArray(node)) return node.flatMap((n) => dashboardQueries(n, key));
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
  let close: () => Promise<void> = async () => undefined;
  const exported = new Set<string>();

  beforeAll(async () => {
    const started = await startVaultTestFleet({ workers: 1 });
    close = started.close;
    vault = started.vault;
    const { fleet } = started;
    workerUrl = fleet.workers[0]?.metricsUrl ?? "";
    apiUrl = fleet.apiUrl;
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
    for (const url of [fleet.apiUrl, ...fleet.workers.map((w) => w.metricsUrl)])
      for (const n of exposedNames(await scrape(url))) exported.add(n);
  });
  afterAll(async () => close());

  it("scraped the API's and the worker's own series", () => {
    for (const n of ["citadel_api_requests_total", "citadel_jobs_accepted_total", "citadel_inference_count_total"])
      expect(exported.has(n), n).toBe(true);
  });

  it("alert and recording rules use only exported names (or recorded ones)", () => {
    const missing = rules.flatMap((r) =>
      metricsIn(str(r.expr))
        .filter((m) => !exported.has(m) && !recorded.has(m))
        .map((m) => `${str(r.alert ?? r.record)} uses ${m}`),
    );
    expect(missing).toEqual([]);
  });

  it("dashboard panels and variables use only exported names (or recorded ones)", () => {
    const dash = JSON.parse(readFileSync(path.join(INFRA, "grafana/dashboards/citadel.json"), "utf8")) as unknown;
    const queries = dashboardQueries(dash);
    expect(queries.length).toBeGreaterThan(10);
    const missing = queries.flatMap((q) =>
      metricsIn(q)
        .filter((m) => !exported.has(m) && !recorded.has(m))
        .map((m) => `${m} in ${q}`),
    );
    expect(missing).toEqual([]);
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
