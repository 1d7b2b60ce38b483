import ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import {
  buildConvNet,
  buildHeavyConvNet,
  convNetParameters,
  HEAVY_CONVNET_DEFAULTS,
  heavyConvNetParameters,
  referenceConvNet,
} from "./convnet.js";
import { mulberry32 } from "./prng.js";

function randomInput(count: number, seed: number): Float32Array {
  const next = mulberry32(seed);
  return Float32Array.from({ length: count }, () => next());
}

async function runProbs(
  bytes: Uint8Array,
  x: Float32Array,
  dims: number[],
): Promise<{ data: Float32Array; dims: readonly number[] }> {
  const session = await ort.InferenceSession.create(bytes);
  try {
    const out = await session.run({ x: new ort.Tensor("float32", x, dims) });
    const probs = out.probs;
    if (!probs || !(probs.data instanceof Float32Array)) throw new Error("missing float32 output probs");
    return { data: probs.data, dims: probs.dims };
  } finally {
    await session.release();
  }
}

describe("buildConvNet", () => {
  it("is deterministic: same options give byte-identical models, another seed differs", () => {
    const a = buildConvNet();
    expect(Buffer.from(buildConvNet()).equals(Buffer.from(a))).toBe(true);
    expect(Buffer.from(buildConvNet({ seed: 43 })).equals(Buffer.from(a))).toBe(false);
  });

  it("declares x [N,3,32,32] → probs [N,10] with a symbolic batch axis", async () => {
    const session = await ort.InferenceSession.create(buildConvNet());
    try {
      expect(session.inputNames).toEqual(["x"]);
      expect(session.outputNames).toEqual(["probs"]);
      expect(session.inputMetadata[0]).toMatchObject({ name: "x", type: "float32", shape: ["N", 3, 32, 32] });
      expect(session.outputMetadata[0]).toMatchObject({ name: "probs", type: "float32", shape: ["N", 10] });
    } finally {
      await session.release();
    }
  });

  it.each([1, 5])("matches the JS reference implementation for N=%i", async (batch) => {
    const params = convNetParameters();
    const x = randomInput(batch * 3 * 32 * 32, 100 + batch);
    // Make the samples distinguishable after global pooling: scale sample n by (n+1).
    for (let i = 0; i < x.length; i++) x[i] = (x[i] ?? 0) * (1 + Math.floor(i / (3 * 32 * 32)));
    const { data, dims } = await runProbs(buildConvNet(), x, [batch, 3, 32, 32]);
    expect(dims).toEqual([batch, 10]);
    const expected = referenceConvNet(params, x, batch);
    for (let n = 0; n < batch; n++) {
      const row = data.subarray(n * 10, (n + 1) * 10);
      expect(row.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
      for (let k = 0; k < 10; k++) expect(row[k]).toBeCloseTo(expected[n * 10 + k] ?? Number.NaN, 5);
    }
    // The classifier is not degenerate: the largest probability is well above uniform.
    expect(Math.max(...data.subarray(0, 10))).toBeGreaterThan(0.2);
  });

  it("honours custom shapes, layers and classes", async () => {
    const opts = { channels: 1, height: 5, width: 7, filters: 4, classes: 3, layers: 2, seed: 9 };
    const x = randomInput(2 * 5 * 7, 1);
    const { data, dims } = await runProbs(buildConvNet(opts), x, [2, 1, 5, 7]);
    expect(dims).toEqual([2, 3]);
    const expected = referenceConvNet(convNetParameters(opts), x, 2);
    const maxError = Math.max(...Array.from(data, (v, i) => Math.abs(v - (expected[i] ?? Number.NaN))));
    expect(maxError).toBeLessThan(1e-5);
  });

  it("rejects invalid options", () => {
    expect(() => buildConvNet({ filters: 0 })).toThrow(RangeError);
    expect(() => buildConvNet({ height: 2.5 })).toThrow(RangeError);
  });
});

describe("buildHeavyConvNet", () => {
  it("declares x [N,3,64,64] → probs [N,10] and runs N=1 and N=2", async () => {
    const { channels, height, width, filters, layers } = HEAVY_CONVNET_DEFAULTS;
    expect({ filters, layers }).toEqual({ filters: 64, layers: 3 });
    const bytes = buildHeavyConvNet();
    for (const batch of [1, 2]) {
      const { data, dims } = await runProbs(bytes, randomInput(batch * channels * height * width, 5), [
        batch,
        channels,
        height,
        width,
      ]);
      expect(dims).toEqual([batch, 10]);
      for (let n = 0; n < batch; n++)
        expect(data.subarray(n * 10, n * 10 + 10).reduce((a, b) => a + b)).toBeCloseTo(1, 5);
    }
  });

  it("agrees with the JS reference (spatially reduced so the reference stays fast)", async () => {
    const opts = { height: 12, width: 10 };
    const x = randomInput(3 * 12 * 10, 6);
    const { data } = await runProbs(buildHeavyConvNet(opts), x, [1, 3, 12, 10]);
    const expected = referenceConvNet(heavyConvNetParameters(opts), x, 1);
    for (let k = 0; k < 10; k++) expect(data[k]).toBeCloseTo(expected[k] ?? Number.NaN, 5);
  });
});
