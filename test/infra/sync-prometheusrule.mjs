// Regenerates infra/k8s/components/monitoring/prometheusrule.yaml from the plain rule
// file so both stay identical (test/infra/observability.test.ts checks it).
//   node test/infra/sync-prometheusrule.mjs   (from the repository root)
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(new URL("../package.json", import.meta.url));
const YAML = require("yaml");
const rules = YAML.parse(readFileSync("infra/prometheus/rules/citadel.rules.yml", "utf8"));
const doc = {
  apiVersion: "monitoring.coreos.com/v1",
  kind: "PrometheusRule",
  metadata: { name: "citadel", labels: { release: "prometheus" } },
  spec: { groups: rules.groups },
};
writeFileSync(
  "infra/k8s/components/monitoring/prometheusrule.yaml",
  `# Generated from infra/prometheus/rules/citadel.rules.yml (test/infra checks they match):\n#   node test/infra/sync-prometheusrule.mjs\n${YAML.stringify(doc, { lineWidth: 0 })}`,
);
