import perfHooks from "node:perf_hooks";
import { afterEach, describe, expect, it, vi } from "vitest";
import { createRegistry, EVENT_LOOP_SAMPLE_MS } from "./metrics.js";

describe("createRegistry", () => {
  afterEach(() => vi.restoreAllMocks());

  it("samples the event loop's lag every EVENT_LOOP_SAMPLE_MS, not prom-client's 10 ms (a timer that wakes the process each time)", async () => {
    const monitor = vi.spyOn(perfHooks, "monitorEventLoopDelay");
    const registry = createRegistry("test");
    expect(EVENT_LOOP_SAMPLE_MS).toBeGreaterThanOrEqual(50);
    expect(monitor).toHaveBeenCalledTimes(1);
    expect(monitor.mock.calls[0]?.[0]).toEqual({ resolution: EVENT_LOOP_SAMPLE_MS });
    // The lag is still exported.
    expect(await registry.getSingleMetricAsString("nodejs_eventloop_lag_p99_seconds")).toContain('app="test"');
  });

  it("leaves the default metrics out when asked", () => {
    const monitor = vi.spyOn(perfHooks, "monitorEventLoopDelay");
    createRegistry("test", false);
    expect(monitor).not.toHaveBeenCalled();
  });
});
