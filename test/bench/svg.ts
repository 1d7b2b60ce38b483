/** A small hand-written grouped bar chart (no dependencies): samples/s per contender, per model. */
export interface ChartGroup {
  label: string;
  limit: number;
  naive: number;
  citadel: number;
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

export function renderChart(groups: ChartGroup[], subtitle: string): string {
  const W = 720;
  const H = 380;
  const left = 70;
  const right = 20;
  const top = 64;
  const bottom = 70;
  const plotW = W - left - right;
  const plotH = H - top - bottom;
  const series = [
    { key: "limit", name: "onnxruntime alone (limit)", color: "#7f8c8d" },
    { key: "naive", name: "naive BullMQ worker", color: "#e67e22" },
    { key: "citadel", name: "Citadel end to end (HTTP)", color: "#2471a3" },
  ] as const;
  const max = Math.max(1, ...groups.flatMap((g) => [g.limit, g.naive, g.citadel]));
  const step = niceStep(max / 5);
  const yMax = Math.ceil(max / step) * step;
  const y = (v: number) => top + plotH - (v / yMax) * plotH;
  const groupW = plotW / Math.max(1, groups.length);
  const barW = Math.min(70, (groupW * 0.7) / series.length);
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="system-ui, sans-serif" font-size="12">`,
  );
  parts.push("<title>Citadel benchmark: throughput against the onnxruntime limit and a naive BullMQ worker</title>");
  parts.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`);
  parts.push(
    `<text x="${left}" y="24" font-size="16" font-weight="600">Throughput, samples/s (higher is better)</text>`,
  );
  parts.push(`<text x="${left}" y="44" fill="#555">${esc(subtitle)}</text>`);
  for (let v = 0; v <= yMax + 1e-9; v += step) {
    parts.push(`<line x1="${left}" x2="${W - right}" y1="${y(v)}" y2="${y(v)}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${left - 8}" y="${y(v) + 4}" text-anchor="end" fill="#555">${Math.round(v)}</text>`);
  }
  groups.forEach((g, gi) => {
    const x0 = left + gi * groupW + (groupW - barW * series.length) / 2;
    series.forEach((s, si) => {
      const v = g[s.key];
      const x = x0 + si * barW;
      parts.push(
        `<rect x="${x + 2}" y="${y(v)}" width="${barW - 4}" height="${top + plotH - y(v)}" fill="${s.color}"><title>${esc(s.name)}: ${Math.round(v)}</title></rect>`,
      );
      const ratio = s.key === "limit" ? "" : ` (${(v / Math.max(1e-9, g.limit)).toFixed(2)}×)`;
      parts.push(
        `<text x="${x + barW / 2}" y="${y(v) - 4}" text-anchor="middle" font-size="11">${Math.round(v)}${ratio}</text>`,
      );
    });
    parts.push(
      `<text x="${left + gi * groupW + groupW / 2}" y="${top + plotH + 18}" text-anchor="middle" font-weight="600">${esc(g.label)}</text>`,
    );
  });
  parts.push(`<line x1="${left}" x2="${W - right}" y1="${top + plotH}" y2="${top + plotH}" stroke="#333"/>`);
  series.forEach((s, si) => {
    const x = left + si * 220;
    const ly = H - 22;
    parts.push(`<rect x="${x}" y="${ly - 10}" width="12" height="12" fill="${s.color}"/>`);
    parts.push(`<text x="${x + 18}" y="${ly}">${esc(s.name)}</text>`);
  });
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}

function niceStep(raw: number): number {
  const p = 10 ** Math.floor(Math.log10(Math.max(raw, 1e-9)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}
