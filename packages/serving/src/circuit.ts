export type CircuitState = "closed" | "open" | "half-open";

export interface CircuitOptions {
  /** Consecutive failed runs that open the circuit. */
  failureThreshold: number;
  /** How long an open circuit stays open before one probe is let through. */
  cooldownMs: number;
}

/**
 * Per-model circuit breaker. Open: the consumer stops pulling the model's jobs
 * (they wait in Redis, nothing is lost). After the cooldown one probe batch runs;
 * success closes it, failure opens it again.
 */
export class CircuitBreaker {
  private failures = 0;
  private openedAt = 0;
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
    if (this.state !== "closed") this.set("closed");
  }

  failure(): void {
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
