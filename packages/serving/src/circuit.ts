export type CircuitState = "closed" | "open" | "half-open";

export interface CircuitOptions {
  /** Consecutive failed runs that open the circuit. */
  failureThreshold: number;
  /** How long an open circuit stays open before one probe is let through. */
  cooldownMs: number;
  /**
   * A failure within this long after any run of the model succeeded is blamed on the
   * inputs, not the model: the model demonstrably works, so one tenant's poison inputs
   * cannot pause it for everyone. A model that stops succeeding opens the circuit once
   * its last success is older than this. Default 30 s.
   */
  inputFaultWindowMs?: number;
}

/**
 * Per-model circuit breaker. Open: the consumer stops pulling the model's jobs
 * (they wait in Redis, nothing is lost). After the cooldown one probe batch runs;
 * success closes it, failure opens it again. Counts failures of the model, not of
 * one job's input (see `inputFaultWindowMs`).
 */
export class CircuitBreaker {
  private failures = 0;
  private openedAt = 0;
  private lastSuccessAt = Number.NEGATIVE_INFINITY;
  state: CircuitState = "closed";

  constructor(
    private readonly opts: CircuitOptions,
    private readonly onChange: (state: CircuitState) => void,
    private readonly now: () => number = Date.now,
  ) {}

  /** Whether work may be pulled now; moves open → half-open after the cooldown. */
  allow(): boolean {
    if (this.state === "open" && this.now() - this.openedAt >= this.opts.cooldownMs) this.set("half-open");
    return this.state !== "open";
  }

  /** Ms until an open circuit may probe again (0 when not open). */
  waitMs(): number {
    return this.state === "open" ? Math.max(0, this.opts.cooldownMs - (this.now() - this.openedAt)) : 0;
  }

  success(): void {
    this.failures = 0;
    this.lastSuccessAt = this.now();
    if (this.state !== "closed") this.set("closed");
  }

  /** A batch whose every run failed. Ignored (blamed on its inputs) while the model recently succeeded. */
  failure(): void {
    if (this.state === "closed" && this.now() - this.lastSuccessAt <= (this.opts.inputFaultWindowMs ?? 30_000)) return;
    this.failures++;
    if (this.state === "half-open" || this.failures >= this.opts.failureThreshold) {
      this.openedAt = this.now();
      this.failures = 0;
      this.set("open");
    }
  }

  private set(s: CircuitState): void {
    this.state = s;
    this.onChange(s);
  }
}
