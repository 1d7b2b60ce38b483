import type { AuditSink } from "@citadel/audit";

/** A refused request worth keeping as evidence, before aggregation. */
export interface Denial {
  event: "auth.denied" | "rate.limited";
  clientIp: string;
  /** Known when the request carried a valid key. */
  tenant?: string;
  /** Why: "no key", "unknown key", "ip", "requests", "samples", "board credentials rejected"… */
  detail: string;
  requestId?: string;
}

export interface DenialAggregatorOptions {
  /** Length of one aggregation window. */
  windowMs: number;
  /** Sources (event, address, tenant, reason) tracked per window; the rest fold into one record per event. */
  maxSources: number;
}

interface Open {
  event: Denial["event"];
  fields: { clientIp: string; tenant?: string; detail: string };
  /** Denials after the window's first one (which was recorded at once). */
  more: number;
}

/**
 * Turns floods of refusals into a bounded number of audit records. Per source and
 * window: the first denial is recorded at once (with its request id, so the evidence
 * is there while the flood goes on) and the rest as one record carrying their `count`,
 * written when the window ends or on close. A flood from more sources than it tracks
 * folds the overflow into one "many sources" record per event, so memory stays bounded
 * too. Without this, anyone without a key could trim the bounded audit stream.
 */
export class DenialAggregator {
  private open = new Map<string, Open>();
  private overflow = new Map<Denial["event"], { count: number; details: Set<string> }>();
  private readonly timer: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly audit: AuditSink,
    private readonly o: DenialAggregatorOptions,
  ) {
    this.timer = setInterval(() => this.flush(), o.windowMs);
    this.timer.unref();
  }

  note(d: Denial): void {
    const key = JSON.stringify([d.event, d.clientIp, d.tenant ?? "", d.detail]);
    const seen = this.open.get(key);
    if (seen) {
      seen.more++;
      return;
    }
    if (this.closed) {
      // After close (a request still finishing during shutdown): nothing will flush, record it alone.
      this.audit.record(d.event, { ...fieldsOf(d), requestId: d.requestId, count: 1 });
      return;
    }
    if (this.open.size >= this.o.maxSources) {
      const o = this.overflow.get(d.event) ?? { count: 0, details: new Set<string>() };
      o.count++;
      // A handful of reasons is enough to tell what the flood was; the set stays small.
      if (o.details.size < 8) o.details.add(d.detail);
      this.overflow.set(d.event, o);
      return;
    }
    this.open.set(key, { event: d.event, fields: fieldsOf(d), more: 0 });
    this.audit.record(d.event, { ...fieldsOf(d), requestId: d.requestId, count: 1 });
  }

  /** Ends the current window: one record per source that saw more than its first denial. */
  flush(): void {
    const open = this.open;
    const overflow = this.overflow;
    this.open = new Map();
    this.overflow = new Map();
    for (const s of open.values()) if (s.more > 0) this.audit.record(s.event, { ...s.fields, count: s.more });
    for (const [event, o] of overflow) {
      this.audit.record(event, {
        detail: `many sources (more than ${this.o.maxSources} in one window): ${[...o.details].join(", ")}`,
        count: o.count,
      });
    }
  }

  /** Flushes what is pending and stops the window timer (idempotent). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    this.flush();
  }
}

function fieldsOf(d: Denial): Open["fields"] {
  return { clientIp: d.clientIp, ...(d.tenant ? { tenant: d.tenant } : {}), detail: d.detail };
}
