/** Issue 11's targets as ratios or bounds, each with pass/miss (n/a when it could not be measured). */
export interface Target {
  name: string;
  /** null when the row could not be measured (`note` says why). */
  value: number | null;
  op: ">=" | "<=";
  goal: number;
  unit: string;
  note?: string;
}

export function passes(t: Target): boolean | null {
  if (t.value === null || !Number.isFinite(t.value)) return null;
  return t.op === ">=" ? t.value >= t.goal : t.value <= t.goal;
}

export function targetLines(targets: readonly Target[]): string[] {
  return targets.map((t) => {
    const p = passes(t);
    const verdict = p === null ? "n/a " : p ? "PASS" : "MISS";
    const value = t.value === null || !Number.isFinite(t.value) ? "-" : `${t.value.toFixed(2)}${t.unit}`;
    const goal = `${t.op === ">=" ? "≥" : "≤"} ${t.goal}${t.unit}`;
    return `${verdict}  ${t.name}: ${value} (target ${goal})${t.note ? `; ${t.note}` : ""}`;
  });
}
