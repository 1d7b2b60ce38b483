import { CitadelError, type ManifestBody } from "@citadel/contracts";
import { RunnerGoneError, type RunParts, type RunResult } from "@citadel/runtime";
import type { Tensor } from "@citadel/tensors";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { type BatchRunner, executeBatch, JobCancel, type Outcome, type RunJob, type RunReport } from "./executor.js";

// An identity model y = x on [N,2]; the fake runner below stands in for onnxruntime so
// that each rule of the executor is checked alone (the e2e suites run the real thing).
const manifest = {
  inputs: [{ name: "x", dtype: "float32", shape: [null, 2], batchAxis: 0 }],
  outputs: [{ name: "y", dtype: "float32", shape: [null, 2], batchAxis: 0 }],
  timeoutMs: 1000,
  outputPolicy: {},
} as unknown as ManifestBody;

const POISON = -1;

/** Runs y = x; a batch holding a poison value fails (or hangs, for `hang`), like a bad input would. */
class FakeRunner implements BatchRunner {
  runs: number[][] = [];
  alive = true;
  constructor(
    private readonly mode: "fail" | "hang" = "fail",
    private readonly gate?: Promise<void>,
  ) {}
  async run(
    feeds: Record<string, Tensor>,
    _outputs: string[],
    timeoutMs: number,
    signal?: AbortSignal,
    onStart?: () => void,
    parts?: RunParts,
  ): Promise<RunResult> {
    const x = feeds.x as Tensor;
    const values = Array.from(x.data as Float32Array);
    // A batch in parts is one call, run part after part as ModelRunner's thread does.
    const samples = values.filter((_, i) => i % 2 === 0);
    let at = 0;
    for (const size of parts?.sizes ?? [samples.length]) {
      this.runs.push(samples.slice(at, at + size));
      at += size;
    }
    onStart?.();
    if (signal?.aborted) throw new CitadelError("CANCELLED", "aborted");
    await this.gate;
    if (values.includes(POISON)) {
      if (this.mode === "fail") throw new CitadelError("RUNTIME_ERROR", "inference failed: Gather index out of range");
      await new Promise((r) => setTimeout(r, timeoutMs));
      this.alive = false;
      throw new CitadelError("TIMEOUT", `inference exceeded ${timeoutMs} ms`);
    }
    const runs = parts && parts.sizes.length > 1 ? { runs: parts.sizes.map(() => 1) } : {};
    return { outputs: { y: { ...x, data: Float32Array.from(x.data as Float32Array) } }, ms: 1, ...runs };
  }
}

function job(id: string, first: number, extra: Partial<RunJob> = {}): RunJob {
  const cancel = new JobCancel();
  return {
    id,
    tensors: { x: { dtype: "float32", shape: [1, 2], data: Float32Array.of(first, 0.5) } },
    samples: 1,
    outputs: ["y"],
    timeoutMs: manifest.timeoutMs,
    deadline: Date.now() + 60_000,
    cancel,
    ...extra,
  };
}

async function execute(jobs: RunJob[], runner: BatchRunner, shutdown = new AbortController()) {
  const outcomes = new Map<string, Outcome[]>();
  const runs: RunReport[] = [];
  const done = executeBatch(jobs, {
    model: async () => ({ manifest, runner }),
    settle: async (j, o) => {
      outcomes.set(j.id, [...(outcomes.get(j.id) ?? []), o]);
    },
    onRun: (r) => runs.push(r),
    shutdown: shutdown.signal,
  });
  return { done, outcomes, runs };
}

const code = (o: Outcome[] | undefined) => (o?.length === 1 && o[0] && !o[0].ok ? o[0].error.code : "ok-or-many");
const firstValue = (o: Outcome[] | undefined) => {
  const r = o?.[0];
  if (!r?.ok) return undefined;
  const b = Buffer.from(r.outputs.y?.data ?? "", "base64");
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4)[0];
};

describe("executor", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("gives each job its own slice of the run, once", async () => {
    const runner = new FakeRunner();
    const { done, outcomes, runs } = await execute([job("a", 1), job("b", 2), job("c", 3)], runner);
    await done;
    expect(runner.runs).toEqual([[1, 2, 3]]);
    expect(["a", "b", "c"].map((id) => firstValue(outcomes.get(id)))).toEqual([1, 2, 3]);
    for (const o of outcomes.values()) expect(o).toHaveLength(1);
    expect(runs).toEqual([{ jobs: 3, samples: 3, ok: true, ms: 1 }]);
  });

  it("a job's own short timeout fails that job alone; the run is bounded by the model's timeout", async () => {
    let release = () => {};
    const runner = new FakeRunner("fail", new Promise<void>((r) => (release = r)));
    const { done, outcomes } = await execute([job("attacker", 1, { timeoutMs: 10 }), job("victim", 2)], runner);
    await vi.advanceTimersByTimeAsync(50);
    expect(code(outcomes.get("attacker"))).toBe("TIMEOUT");
    expect(outcomes.get("victim")).toBeUndefined();
    release();
    await done;
    expect(firstValue(outcomes.get("victim"))).toBe(2);
    expect(outcomes.get("attacker")).toHaveLength(1);
  });

  it("splits a failing batch until the poison input fails alone, with its own code", async () => {
    const runner = new FakeRunner("fail");
    const jobs = [job("a", 1), job("b", 2), job("poison", POISON), job("d", 4), job("e", 5)];
    const { done, outcomes, runs } = await execute(jobs, runner);
    const summary = await done;
    // The model ran the others: the input is at fault (not retried, not the model's failure).
    expect(code(outcomes.get("poison"))).toBe("INPUT_FAULT");
    expect(summary).toMatchObject({ inputFaults: 1 });
    expect(["a", "b", "d", "e"].map((id) => firstValue(outcomes.get(id)))).toEqual([1, 2, 4, 5]);
    // 5 → [a,b,poison] + [d,e]; [a,b,poison] → [a,b] + [poison].
    expect(runner.runs).toEqual([[1, 2, POISON, 4, 5], [1, 2, POISON], [1, 2], [POISON], [4, 5]]);
    expect(runs.filter((r) => !r.ok).map((r) => [r.jobs, r.bisected])).toEqual([
      [5, true],
      [3, true],
      [1, false],
    ]);
  });

  it("puts a lone job's failure on its input when the model runs its probe, on the model when it does not", async () => {
    for (const [works, want] of [
      [true, "INPUT_FAULT"],
      [false, "RUNTIME_ERROR"],
      [undefined, "RUNTIME_ERROR"],
    ] as const) {
      const outcomes = new Map<string, Outcome[]>();
      const asked: string[] = [];
      const summary = await executeBatch([job("poison", POISON)], {
        model: async () => ({ manifest, runner: new FakeRunner("fail") }),
        settle: async (j, o) => {
          outcomes.set(j.id, [...(outcomes.get(j.id) ?? []), o]);
        },
        onRun: () => undefined,
        shutdown: new AbortController().signal,
        ...(works === undefined
          ? {}
          : {
              modelWorks: async (j: RunJob) => {
                asked.push(j.id);
                return works;
              },
            }),
      });
      expect(code(outcomes.get("poison")), String(works)).toBe(want);
      expect(asked).toEqual(works === undefined ? [] : ["poison"]);
      expect(summary).toEqual({ okRuns: 0, failedRuns: 1, inputFaults: works ? 1 : 0 });
    }
  });

  it("frees the runner once the batch's last run is over, before its jobs are settled", async () => {
    const runner = new FakeRunner("fail");
    const events: string[] = [];
    let settled = () => {};
    const settling = new Promise<void>((r) => (settled = r));
    const done = executeBatch([job("a", 1), job("poison", POISON), job("c", 3)], {
      model: async () => ({ manifest, runner }),
      settle: async (j) => {
        events.push(`settle ${j.id}`);
        await settling;
      },
      onRun: (r) => events.push(`run ${r.jobs}`),
      onRunsEnd: () => events.push("runs end"),
      shutdown: new AbortController().signal,
    });
    await vi.waitFor(() => expect(events).toContain("runs end"));
    // Every run (the split ones too) came before; the settles it started are still pending.
    expect(events.filter((e) => e.startsWith("run ")).length).toBe(runner.runs.length);
    expect(events.at(-1)).toBe("runs end");
    let finished = false;
    void done.then(() => (finished = true));
    await vi.advanceTimersByTimeAsync(10);
    expect(finished).toBe(false);
    settled();
    await done;
    expect(events.filter((e) => e === "runs end")).toHaveLength(1);
  });

  it("splits a batch that overran the model's timeout, so the others complete", async () => {
    const runner = new FakeRunner("hang");
    const { done, outcomes } = await execute([job("a", 1), job("slow", POISON)], runner);
    await vi.advanceTimersByTimeAsync(3000);
    await done;
    expect(code(outcomes.get("slow"))).toBe("TIMEOUT");
    expect(firstValue(outcomes.get("a"))).toBe(1);
  });

  it("runs again, on a fresh runner, a batch whose runner died (another batch's timeout) before its run began", async () => {
    // Two batches on one runner: the first (the attacker's) overruns the model's timeout,
    // and the runner refuses the run queued behind it. That run never began: it says
    // nothing of its input, so it is neither failed, nor split, nor counted.
    let current: BatchRunner = {
      run: async () => {
        throw new RunnerGoneError(new CitadelError("RUNTIME_ERROR", "runner abandoned (timeout)"));
      },
    };
    const fresh = new FakeRunner();
    let asked = 0;
    const outcomes = new Map<string, Outcome[]>();
    const runs: RunReport[] = [];
    await executeBatch([job("victim", 7)], {
      model: async () => {
        asked++;
        const runner = current;
        current = fresh;
        return { manifest, runner };
      },
      settle: async (j, o) => {
        outcomes.set(j.id, [...(outcomes.get(j.id) ?? []), o]);
      },
      onRun: (r) => runs.push(r),
      shutdown: new AbortController().signal,
    });
    expect(firstValue(outcomes.get("victim"))).toBe(7);
    expect(asked).toBe(2);
    expect(runs.map((r) => r.ok)).toEqual([true]);
    // A runner that is gone every time is a failure after all (no endless loop).
    const gone: BatchRunner = {
      run: async () => {
        throw new RunnerGoneError(new CitadelError("RUNTIME_ERROR", "runner closed"));
      },
    };
    const again = await execute([job("b", 2)], gone);
    await again.done;
    expect(code(again.outcomes.get("b"))).toBe("RUNTIME_ERROR");
  });

  it("requeues a lone job whose own input buffer went to a runner that died before its run began", async () => {
    // runner.ts takes a buffer the bytes fill (a lone job's own, lease.ts) rather than
    // copy it: after the runner is gone the job has no bytes to run again here. It goes
    // back to the queue (its inputs are still in Redis), never run on empty bytes or
    // failed; a job in a batch of several (run from a concatenation) runs again.
    const takes = (feeds: Record<string, Tensor>) => {
      const data = (feeds.x as Tensor).data;
      structuredClone(data.buffer, { transfer: [data.buffer as ArrayBuffer] });
      throw new RunnerGoneError(new CitadelError("RUNTIME_ERROR", "runner abandoned (timeout)"));
    };
    const fresh = new FakeRunner();
    const lone = await execute([job("lone", 4)], { run: async (feeds) => takes(feeds) });
    await lone.done;
    expect(lone.outcomes.get("lone")).toEqual([expect.objectContaining({ ok: false, requeue: true })]);
    expect(lone.runs).toEqual([]);
    let first = true;
    const pair = await execute([job("a", 1), job("b", 2)], {
      run: async (feeds, ...rest) => {
        if (!first) return fresh.run(feeds, ...rest);
        first = false;
        return takes(feeds);
      },
    });
    await pair.done;
    expect([firstValue(pair.outcomes.get("a")), firstValue(pair.outcomes.get("b"))]).toEqual([1, 2]);
    expect(fresh.runs).toEqual([[1, 2]]);
  });

  it("settles a cancelled job at once without cutting off the run for the others", async () => {
    let release = () => {};
    const runner = new FakeRunner("fail", new Promise<void>((r) => (release = r)));
    const a = job("a", 1);
    const { done, outcomes } = await execute([a, job("b", 2)], runner);
    await vi.advanceTimersByTimeAsync(1);
    a.cancel.cancel();
    expect(code(outcomes.get("a"))).toBe("CANCELLED");
    release();
    await done;
    expect(firstValue(outcomes.get("b"))).toBe(2);
    expect(outcomes.get("a")).toHaveLength(1);
  });

  it("does not run jobs past their deadline or cancelled before the run", async () => {
    const runner = new FakeRunner();
    const late = job("late", 1, { deadline: Date.now() - 1 });
    const gone = job("gone", 2);
    gone.cancel.cancel();
    const { done, outcomes } = await execute([late, gone, job("ok", 3)], runner);
    await done;
    expect(code(outcomes.get("late"))).toBe("DEADLINE_EXCEEDED");
    expect(code(outcomes.get("gone"))).toBe("CANCELLED");
    expect(runner.runs).toEqual([[3]]);
  });

  it("on shutdown, every unsettled job goes back to the queue", async () => {
    const runner = new FakeRunner("fail", new Promise<void>(() => {}));
    const shutdown = new AbortController();
    shutdown.abort();
    const { done, outcomes } = await execute([job("a", 1)], runner, shutdown);
    await done;
    const o = outcomes.get("a")?.[0];
    expect(o && !o.ok && o.requeue).toBe(true);
  });

  it("a model that cannot be loaded fails every job with that code", async () => {
    const outcomes: [string, Outcome][] = [];
    await executeBatch([job("a", 1), job("b", 2)], {
      model: async () => {
        throw new CitadelError("SIGNATURE_INVALID", "manifest signature does not verify");
      },
      settle: async (j, o) => {
        outcomes.push([j.id, o]);
      },
      onRun: () => {},
      shutdown: new AbortController().signal,
    });
    expect(outcomes.map(([id, o]) => [id, o.ok ? "ok" : o.error.code])).toEqual([
      ["a", "SIGNATURE_INVALID"],
      ["b", "SIGNATURE_INVALID"],
    ]);
  });
});

describe("executor, a model that runs best below its maxBatch (runBatch)", () => {
  const cut = { ...manifest, maxBatch: 16, runBatch: 4 } as ManifestBody;
  /** A job of `n` samples x = [[0, .5], [1, .5], …], poison at `poisonAt`. */
  const wide = (id: string, n: number, poisonAt = -1): RunJob => {
    const data = new Float32Array(2 * n);
    for (let i = 0; i < n; i++) data.set([i === poisonAt ? POISON : i, 0.5], 2 * i);
    return { ...job(id, 0), tensors: { x: { dtype: "float32", shape: [n, 2], data } }, samples: n };
  };
  const run = (jobs: RunJob[], runner: BatchRunner) => {
    const outcomes = new Map<string, Outcome[]>();
    const runs: RunReport[] = [];
    const done = executeBatch(jobs, {
      model: async () => ({ manifest: cut, runner }),
      settle: async (j, o) => {
        outcomes.set(j.id, [...(outcomes.get(j.id) ?? []), o]);
      },
      onRun: (r) => runs.push(r),
      shutdown: new AbortController().signal,
    });
    return { done, outcomes, runs };
  };
  const values = (o: Outcome[] | undefined) => {
    const r = o?.[0];
    if (!r?.ok) return undefined;
    const b = Buffer.from(r.outputs.y?.data ?? "", "base64");
    return { shape: r.outputs.y?.shape, data: Array.from(new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4)) };
  };

  it("runs a job larger than runBatch as runs of runBatch and hands it one result, in order", async () => {
    const runner = new FakeRunner();
    const { done, outcomes, runs } = run([wide("big", 10)], runner);
    const summary = await done;
    expect(runner.runs).toEqual([
      [0, 1, 2, 3],
      [4, 5, 6, 7],
      [8, 9],
    ]);
    const want = Array.from(wide("big", 10).tensors.x?.data as Float32Array);
    expect(values(outcomes.get("big"))).toEqual({ shape: [10, 2], data: want });
    expect(outcomes.get("big")).toHaveLength(1);
    // Each run is reported (metrics count onnxruntime runs); the job is one success.
    expect(runs.map((r) => [r.jobs, r.samples, r.ok])).toEqual([
      [1, 4, true],
      [1, 4, true],
      [1, 2, true],
    ]);
    expect(summary).toEqual({ okRuns: 1, failedRuns: 0, inputFaults: 0 });
  });

  it("cuts a batch of several jobs into runs of runBatch across their boundaries; each job gets its own samples", async () => {
    const runner = new FakeRunner();
    const { done, outcomes, runs } = run([wide("a", 3), wide("b", 3), wide("c", 1)], runner);
    await done;
    expect(runner.runs).toEqual([
      [0, 1, 2, 0],
      [1, 2, 0],
    ]);
    expect(values(outcomes.get("a"))?.data).toEqual([0, 0.5, 1, 0.5, 2, 0.5]);
    expect(values(outcomes.get("b"))?.data).toEqual([0, 0.5, 1, 0.5, 2, 0.5]);
    expect(values(outcomes.get("c"))).toEqual({ shape: [1, 2], data: [0, 0.5] });
    expect(runs.map((r) => [r.jobs, r.samples])).toEqual([
      [3, 4],
      [3, 3],
    ]);
  });

  it("splits a failing batch of several jobs as before; each half again in runs of runBatch", async () => {
    const runner = new FakeRunner("fail");
    const { done, outcomes } = run([wide("a", 3), wide("poison", 3, 1), wide("c", 3)], runner);
    const summary = await done;
    expect(code(outcomes.get("poison"))).toBe("INPUT_FAULT");
    expect(summary.inputFaults).toBe(1);
    for (const id of ["a", "c"]) expect(values(outcomes.get(id))?.data).toEqual([0, 0.5, 1, 0.5, 2, 0.5]);
    // 9 samples → [4,4,1] fails; [a,poison] → [4,2] fails; [a] ok, [poison] fails; [c] ok.
    expect(runner.runs.map((r) => r.length)).toEqual([4, 4, 1, 4, 2, 3, 3, 3]);
  });

  it("holds every job to the model's timeout across the batch's runs, while the runs go on", async () => {
    // Each part takes 400 ms, one after another, as ModelRunner's thread runs them.
    const slow: BatchRunner = {
      run: async (feeds, _o, _t, _s, onStart, parts) => {
        const n = parts?.sizes.length ?? 1;
        onStart?.();
        await new Promise((res) => setTimeout(res, 400 * n));
        return { outputs: { y: feeds.x as Tensor }, ms: 400 * n, runs: Array.from({ length: n }, () => 400) };
      },
    };
    vi.useFakeTimers();
    try {
      // 12 samples → 3 runs of 400 ms against the model's 1,000 ms timeout.
      const { done, outcomes, runs } = run([wide("big", 12)], slow);
      await vi.advanceTimersByTimeAsync(999);
      expect(outcomes.get("big")).toBeUndefined();
      await vi.advanceTimersByTimeAsync(1);
      expect(code(outcomes.get("big"))).toBe("TIMEOUT");
      await vi.advanceTimersByTimeAsync(200);
      await done;
      expect(outcomes.get("big")).toHaveLength(1);
      expect(runs).toHaveLength(3);
    } finally {
      vi.useRealTimers();
    }
  });

  it("fails the whole job, once, when one of its runs fails; its parts that ran do not make it the input's fault", async () => {
    const runner = new FakeRunner("fail");
    const { done, outcomes, runs } = run([wide("big", 10, 5)], runner);
    const summary = await done;
    expect(code(outcomes.get("big"))).toBe("RUNTIME_ERROR");
    expect(runs.filter((r) => !r.ok)).toHaveLength(1);
    expect(summary).toEqual({ okRuns: 0, failedRuns: 1, inputFaults: 0 });
  });
});

describe("JobCancel", () => {
  it("cancels once, calls its listener once, and calls none once the listener is cleared", () => {
    const heard: string[] = [];
    const a = new JobCancel();
    a.listen(() => heard.push("a"));
    expect(a.cancelled).toBe(false);
    a.cancel();
    a.cancel();
    expect(a.cancelled).toBe(true);
    const b = new JobCancel();
    b.listen(() => heard.push("b"));
    b.listen(null);
    b.cancel();
    expect(b.cancelled).toBe(true);
    expect(heard).toEqual(["a"]);
  });
});
