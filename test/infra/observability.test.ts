import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import YAML from "yaml";
import { arr, at, INFRA, isObj, type Obj, read, str } from "./support.js";

/** The metric names the application code exports (the brief's contract). */
const APP_METRICS = new Set([
  "citadel_inference_request_success_total",
  "citadel_inference_request_failure_total",
  "citadel_inference_count_total",
  "citadel_inference_exec_count_total",
  "citadel_inference_queue_duration_seconds",
  "citadel_inference_compute_duration_seconds",
  "citadel_model_loads_total",
  "citadel_execution_provider_info",
  "citadel_circuit_state",
  "citadel_runner_restarts_total",
  "citadel_vault_up",
  "citadel_worker_healthy",
  "citadel_api_requests_total",
  "citadel_api_rejections_total",
  "citadel_api_request_duration_seconds",
  "citadel_queue_pending_jobs",
  "citadel_queue_oldest_waiting_seconds",
  "citadel_jobs_accepted_total",
  "citadel_api_samples_total",
  "citadel_board_denials_total",
]);

function metricsIn(expr: string): string[] {
  return [...expr.matchAll(/\b(citadel_[a-z_]+?)(?:_bucket|_sum|_count)?\b(?![:a-z_])/g)]
    .map((m) => m[1] ?? "")
    .filter((m) => m && !m.startsWith("citadel_inference_request_(") && !m.endsWith("_"));
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

  it("uses only metric names the application exports", () => {
    for (const r of rules) {
      for (const m of metricsIn(str(r.expr))) {
        expect(APP_METRICS.has(m) || recorded.has(m), `${str(r.alert ?? r.record)} uses ${m}`).toBe(true);
      }
    }
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
    for (const e of exprs) for (const m of metricsIn(e)) expect(APP_METRICS.has(m), m).toBe(true);
  });

  it("lays panels out without ids colliding", () => {
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) expect(at(p, "gridPos", "w"), str(p.title)).toBeGreaterThan(0);
  });
});
