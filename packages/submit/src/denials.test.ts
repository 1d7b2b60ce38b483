import type { AuditEvent, AuditFields, AuditSink } from "@citadel/audit";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { DenialAggregator } from "./denials.js";

class Recorder implements AuditSink {
  readonly records: { event: AuditEvent; fields: AuditFields }[] = [];
  record(event: AuditEvent, fields: AuditFields): void {
    this.records.push({ event, fields });
  }
  total(pred: (f: AuditFields) => boolean = () => true): number {
    return this.records.filter((r) => pred(r.fields)).reduce((a, r) => a + (r.fields.count ?? 0), 0);
  }
}

const WINDOW = 10_000;

describe("DenialAggregator", () => {
  let sink: Recorder;
  let agg: DenialAggregator;
  beforeEach(() => {
    vi.useFakeTimers();
    sink = new Recorder();
    agg = new DenialAggregator(sink, { windowMs: WINDOW, maxSources: 3 });
  });
  afterEach(() => {
    agg.close();
    vi.useRealTimers();
  });

  it("records the first denial of a window at once, with its request id", () => {
    agg.note({ event: "auth.denied", clientIp: "10.0.0.1", detail: "no key", requestId: "r1" });
    expect(sink.records).toEqual([
      { event: "auth.denied", fields: { clientIp: "10.0.0.1", detail: "no key", requestId: "r1", count: 1 } },
    ]);
  });

  it("turns a flood from one address into two records per window whose counts sum to the flood", () => {
    const n = 5000;
    for (let i = 0; i < n; i++)
      agg.note({ event: "auth.denied", clientIp: "10.0.0.1", detail: "no key", requestId: `r${i}` });
    expect(sink.records).toHaveLength(1);
    vi.advanceTimersByTime(WINDOW);
    expect(sink.records).toHaveLength(2);
    expect(sink.records[1]).toEqual({
      event: "auth.denied",
      fields: { clientIp: "10.0.0.1", detail: "no key", count: n - 1 },
    });
    expect(sink.total()).toBe(n);
    // The next window starts over: its first denial is recorded at once again.
    for (let i = 0; i < n; i++) agg.note({ event: "auth.denied", clientIp: "10.0.0.1", detail: "no key" });
    vi.advanceTimersByTime(WINDOW);
    expect(sink.records).toHaveLength(4);
    expect(sink.total()).toBe(2 * n);
  });

  it("writes nothing more for a window with a single denial, and nothing at all when quiet", () => {
    agg.note({ event: "rate.limited", clientIp: "10.0.0.2", detail: "ip" });
    vi.advanceTimersByTime(5 * WINDOW);
    expect(sink.records).toHaveLength(1);
  });

  it("keeps sources apart: address, tenant, event and reason", () => {
    agg.note({ event: "auth.denied", clientIp: "10.0.0.1", detail: "no key" });
    agg.note({ event: "auth.denied", clientIp: "10.0.0.1", detail: "unknown key" });
    agg.note({ event: "rate.limited", clientIp: "10.0.0.1", tenant: "acme", detail: "samples" });
    expect(sink.records.map((r) => [r.event, r.fields.detail, r.fields.tenant])).toEqual([
      ["auth.denied", "no key", undefined],
      ["auth.denied", "unknown key", undefined],
      ["rate.limited", "samples", "acme"],
    ]);
  });

  it("bounds memory: sources past the cap fold into one record per event, counts preserved", () => {
    const ips = Array.from({ length: 1000 }, (_, i) => `10.1.${i >> 8}.${i & 255}`);
    for (const ip of ips)
      for (let k = 0; k < 3; k++) agg.note({ event: "auth.denied", clientIp: ip, detail: "no key" });
    for (const ip of ips) agg.note({ event: "rate.limited", clientIp: ip, detail: "ip" });
    // Three tracked sources got their first record; nobody else did.
    expect(sink.records).toHaveLength(3);
    vi.advanceTimersByTime(WINDOW);
    const overflow = sink.records.filter((r) => r.fields.clientIp === undefined);
    expect(overflow.map((r) => r.event).sort()).toEqual(["auth.denied", "rate.limited"]);
    for (const r of overflow) expect(r.fields.detail).toMatch(/many sources .*3/);
    expect(sink.records.length).toBeLessThanOrEqual(3 + 3 + 2);
    expect(sink.total((f) => f.detail === "no key" || /no key/.test(f.detail ?? ""))).toBe(3000);
    expect(sink.total()).toBe(4000);
  });

  it("flushes what is pending on close, and records alone what arrives after", () => {
    for (let i = 0; i < 7; i++)
      agg.note({ event: "rate.limited", clientIp: "10.0.0.3", detail: "requests", tenant: "t" });
    agg.close();
    expect(sink.total()).toBe(7);
    expect(sink.records).toHaveLength(2);
    agg.note({ event: "rate.limited", clientIp: "10.0.0.3", detail: "requests", tenant: "t" });
    expect(sink.records).toHaveLength(3);
    agg.close();
    vi.advanceTimersByTime(WINDOW);
    expect(sink.records).toHaveLength(3);
  });
});
