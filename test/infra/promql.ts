/**
 * Metric names a PromQL expression (or a Grafana query) reads, found by parsing it
 * rather than by a list: what is left of an expression once strings, label matchers,
 * ranges, grouping clauses, numbers and durations are taken out is operators,
 * function calls and metric names.
 */

const KEYWORDS = new Set([
  "and",
  "or",
  "unless",
  "by",
  "without",
  "on",
  "ignoring",
  "group_left",
  "group_right",
  "offset",
  "bool",
  "atan2",
  "inf",
  "nan",
  "start",
  "end",
]);

/** `{__name__=~"a_(x|y)_total"}` selects a_x_total and a_y_total (one alternation group, expanded). */
function namesFromNameMatcher(re: string): string[] {
  const group = /\(([^()]*)\)/.exec(re);
  return group ? (group[1] ?? "").split("|").map((alt) => re.replace(group[0], alt)) : [re];
}

/** Takes out the parts of a PromQL expression that never name a metric. */
function stripNonMetrics(expr: string): string {
  return (
    expr
      // Grafana's label_values(metric, label): only the first argument is a metric.
      .replace(/label_values\(\s*([^,()]+?)\s*,\s*[A-Za-z_]\w*\s*\)/g, " $1 ")
      .replace(/label_values\(\s*[A-Za-z_]\w*\s*\)/g, " ")
      .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
      .replace(/\{[^}]*\}/g, " ")
      .replace(/\[[^\]]*\]/g, " ")
      .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ")
      // Grafana variables ($model, ${datasource}, $__rate_interval).
      .replace(/\$\{?\w+\}?/g, " ")
  );
}

export function metricsIn(expr: string): string[] {
  const out = new Set<string>();
  for (const m of expr.matchAll(/__name__\s*=~?\s*"([^"]*)"/g))
    for (const n of namesFromNameMatcher(m[1] ?? "")) out.add(n);
  const rest = stripNonMetrics(expr);
  // An identifier not glued to a number (1e-9, 15m, 1d) and not called as a function.
  for (const m of rest.matchAll(/(?<![\w.:])[A-Za-z_:][\w:]*(?!\w)(?!\s*\()/g)) {
    if (!KEYWORDS.has(m[0].toLowerCase())) out.add(m[0]);
  }
  return [...out];
}
