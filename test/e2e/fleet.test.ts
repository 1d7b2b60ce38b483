import { readFileSync } from "node:fs";
import { OCR_CLS_PATH } from "@citadel/cli/sample-models";
import { buildConvNet } from "@citadel/onnx";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { b64, decodeF32, startTestFleet, type TestFleet } from "../support/fleet.js";

let fleet: TestFleet;
const conv = buildConvNet();
const ocr = new Uint8Array(readFileSync(OCR_CLS_PATH));

beforeAll(async () => {
  fleet = await startTestFleet({ workers: 2 });
  await fleet.publish(conv, {
    name: "conv",
    version: "1",
    spec: { maxBatch: 16, maxQueueDelayMs: 5, inputs: { x: { range: [-10, 10] } } },
  });
  await fleet.publish(ocr, {
    name: "ocr-cls",
    version: "1",
    spec: { maxBatch: 8, maxQueueDelayMs: 5, inputs: { x: { range: [-1, 1], maxDim: 1024 } } },
  });
});
afterAll(async () => {
  await fleet?.close();
});

function randomInput(n: number, seed: number, scale = 1): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (s / 2147483648) * 2 * scale - scale;
  });
}

async function runThroughFleet(model: string, shape: number[], data: Float32Array) {
  const sub = await fleet.request("POST", "/v1/jobs", {
    model,
    inputs: { x: { dtype: "float32", shape, data: b64(data) } },
  });
  expect(sub.status, JSON.stringify(sub.json)).toBe(202);
  expect(sub.json).toMatchObject({ status: "queued", model, version: "1" });
  const done = await fleet.request("GET", `/v1/jobs/${sub.json.id}?wait=20000`);
  expect(done.status).toBe(200);
  expect(done.json.status, JSON.stringify(done.json.error)).toBe("completed");
  return done.json;
}

describe("one job through the whole real path", () => {
  it.each([
    ["conv", [3, 32, 32], conv, 1],
    ["ocr-cls", [3, 48, 192], ocr, 1],
  ] as const)("%s: fleet outputs equal a direct onnxruntime run, batched or not", async (model, dims, bytes, scale) => {
    const session = await ort.InferenceSession.create(bytes);
    const sizes = [1, 3, 2, 1, 4, 1];
    const per = dims.reduce((a, b) => a * b, 1);
    const inputs = sizes.map((n, i) => randomInput(n * per, 17 + i, scale));
    // Submit concurrently so the workers batch them together.
    const views = await Promise.all(inputs.map((x, i) => runThroughFleet(model, [sizes[i] as number, ...dims], x)));
    for (const [i, view] of views.entries()) {
      const n = sizes[i] as number;
      const direct = await session.run({ x: new ort.Tensor("float32", inputs[i] as Float32Array, [n, ...dims]) });
      const name = session.outputNames[0] as string;
      const got = view.result.outputs[name];
      expect(got.shape).toEqual([...direct[name]!.dims]);
      const want = direct[name]!.data as Float32Array;
      const have = decodeF32(got.data);
      for (let k = 0; k < want.length; k++)
        expect(Math.abs((have[k] as number) - (want[k] as number))).toBeLessThanOrEqual(1e-6);
      expect(view.result.provider).toBe("cpu");
      // The job's own samples, whatever run it shared (test/e2e/tenant-isolation.test.ts proves sharing).
      expect(view.result.batchSize).toBe(n);
      for (const k of ["createdAt", "startedAt", "finishedAt"]) expect(Date.parse(view[k])).toBeGreaterThan(0);
    }
    await session.release();
  });
});

describe("HTTP contract", () => {
  const good = () => ({
    model: "conv",
    inputs: { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(randomInput(3072, 1)) } },
  });

  it("refuses a missing or unknown key with 401", async () => {
    expect((await fleet.request("POST", "/v1/jobs", good(), { authorization: "" })).json.error.code).toBe(
      "UNAUTHORIZED",
    );
    const r = await fleet.request("POST", "/v1/jobs", good(), { authorization: "Bearer ctd_not-a-real-key" });
    expect(r.status).toBe(401);
  });

  it("answers unknown models 404 and forbidden ones 403", async () => {
    const r = await fleet.request("POST", "/v1/jobs", { ...good(), model: "nope" });
    expect([r.status, r.json.error.code]).toEqual([404, "MODEL_NOT_FOUND"]);
    const key = await fleet.addTenant({ id: "limited", models: ["ocr-cls"] });
    const f = await fleet.request("POST", "/v1/jobs", good(), { authorization: `Bearer ${key}` });
    expect([f.status, f.json.error.code]).toEqual([403, "FORBIDDEN"]);
  });

  it.each([
    ["rank", { x: { dtype: "float32", shape: [3, 32, 32], data: b64(randomInput(3072, 1)) } }, "TENSOR_RANK_MISMATCH"],
    [
      "shape",
      { x: { dtype: "float32", shape: [1, 3, 32, 31], data: b64(randomInput(2976, 1)) } },
      "TENSOR_SHAPE_MISMATCH",
    ],
    [
      "dtype",
      { x: { dtype: "int32", shape: [1, 3, 32, 32], data: b64(new Int32Array(3072)) } },
      "TENSOR_DTYPE_MISMATCH",
    ],
    [
      "batch",
      { x: { dtype: "float32", shape: [17, 3, 32, 32], data: b64(randomInput(17 * 3072, 1)) } },
      "BATCH_TOO_LARGE",
    ],
    [
      "length",
      { x: { dtype: "float32", shape: [2, 3, 32, 32], data: b64(randomInput(3072, 1)) } },
      "TENSOR_DATA_LENGTH_MISMATCH",
    ],
    [
      "NaN",
      { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(new Float32Array(3072).fill(Number.NaN)) } },
      "TENSOR_NON_FINITE",
    ],
    [
      "range",
      { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(new Float32Array(3072).fill(11)) } },
      "TENSOR_OUT_OF_RANGE",
    ],
  ])("refuses a tensor that does not fit (%s) with 422", async (_l, inputs, code) => {
    const r = await fleet.request("POST", "/v1/jobs", { model: "conv", inputs });
    expect([r.status, r.json.error.code]).toEqual([422, code]);
    expect(r.json.error.message.length).toBeGreaterThan(10);
  });

  it("refuses malformed JSON and schema violations with 400", async () => {
    expect((await fleet.request("POST", "/v1/jobs", "{not json")).json.error.code).toBe("MALFORMED_JSON");
    const r = await fleet.request("POST", "/v1/jobs", { ...good(), extra: 1 });
    expect([r.status, r.json.error.code]).toEqual([400, "VALIDATION_FAILED"]);
  });

  it("refuses an oversized body with 413 before reading it all", async () => {
    const r = await fleet.request("POST", "/v1/jobs", "x".repeat(17 * 1024 * 1024));
    expect([r.status, r.json.error.code]).toEqual([413, "PAYLOAD_TOO_LARGE"]);
  });

  it("hides another tenant's job (404)", async () => {
    const sub = await fleet.request("POST", "/v1/jobs", good());
    const other = await fleet.addTenant({ id: "other", models: ["*"] });
    const r = await fleet.request("GET", `/v1/jobs/${sub.json.id}`, undefined, { authorization: `Bearer ${other}` });
    expect([r.status, r.json.error.code]).toEqual([404, "JOB_NOT_FOUND"]);
    expect((await fleet.request("GET", "/v1/jobs/conv.doesnotexistdoesnotexist")).status).toBe(404);
  });
});
