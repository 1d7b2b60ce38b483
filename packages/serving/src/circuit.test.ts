import { describe, expect, it } from "vitest";
import { CircuitBreaker, type CircuitState } from "./circuit.js";

function breaker(inputFaultWindowMs = 1000) {
  let t = 0;
  const states: CircuitState[] = [];
  const c = new CircuitBreaker(
    { failureThreshold: 2, cooldownMs: 500, inputFaultWindowMs },
    (s) => states.push(s),
    () => t,
  );
  return { c, states, at: (ms: number) => (t = ms) };
}

describe("circuit breaker", () => {
  it("opens after consecutive failures of a model that never succeeds, probes after the cooldown", () => {
    const { c, states, at } = breaker();
    c.failure();
    expect(c.state).toBe("closed");
    c.failure();
    expect(c.state).toBe("open");
    at(499);
    expect(c.allow()).toBe(false);
    at(500);
    expect(c.allow()).toBe(true);
    expect(c.state).toBe("half-open");
    c.failure();
    expect(c.state).toBe("open");
    at(1000);
    c.allow();
    c.success();
    expect(states).toEqual(["open", "half-open", "open", "half-open", "closed"]);
  });

  it("blames failures on the inputs while the model recently succeeded (one tenant cannot pause it for all)", () => {
    const { c, at } = breaker(1000);
    c.success();
    for (let i = 0; i < 10; i++) c.failure();
    expect(c.state).toBe("closed");
    at(1001); // the model has not succeeded for longer than the window: now failures count
    c.failure();
    c.failure();
    expect(c.state).toBe("open");
  });
});
