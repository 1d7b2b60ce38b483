import { randomBytes } from "node:crypto";
import type { JobData } from "@citadel/contracts";
import { buildCastModel, buildIdentityModel } from "@citadel/onnx";
import { JobQueues } from "@citadel/queue";
import { Redis } from "ioredis";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { publishModel, queueCounts } from "../support/api-kit.js";
import { type Loose, redisUrl, startTestFleet, type TestFleet } from "../support/fleet.js";

// Issue 12 point 6: float16 and bfloat16 tensors end to end through a running fleet (API,
// Redis, BullMQ, worker, onnxruntime), as JSON and as KServe binary bodies.

const WAIT = 60_000;
let fleet: TestFleet;
let fp16Session: ort.InferenceSession;
let f32Session: ort.InferenceSession;

beforeAll(async () => {
  fleet = await startTestFleet({ workers: 1, env: { MAX_WAIT_MS: String(WAIT) } });
  // A long max delay and a batch that three jobs fill exactly: they share one run.
  await publishModel(fleet, buildIdentityModel("float16", ["N", 4]), {
    name: "fp16",
    version: "1",
    spec: { maxBatch: 4, maxQueueDelayMs: 1000 },
  });
  await publishModel(fleet, buildIdentityModel("float16", ["N", 4]), {
    name: "fp16-ranged",
    version: "1",
    spec: { maxBatch: 4, inputs: { x: { range: [-1, 1] } } },
  });
  // A float32 model whose clients send bfloat16: the worker widens it (bits << 16).
  await publishModel(fleet, buildIdentityModel("float32", ["N", 4]), {
    name: "bf16",
    version: "1",
    spec: { maxBatch: 4, inputs: { x: { dtype: "bfloat16", range: [-300, 300] } } },
  });
  fp16Session = await ort.InferenceSession.create(buildIdentityModel("float16", ["N", 4]));
  f32Session = await ort.InferenceSession.create(buildIdentityModel("float32", ["N", 4]));
});
afterAll(async () => {
  await fleet?.close();
});

const b64 = (bits: number[]) => Buffer.from(Uint16Array.from(bits).buffer).toString("base64");
const bitsOf = (data: string) => Array.from(new Uint16Array(new Uint8Array(Buffer.from(data, "base64")).buffer));

/** A direct onnxruntime run of the float16 identity model, outside Citadel. */
async function directFp16(bits: number[], n: number): Promise<number[]> {
  const data = Uint16Array.from(bits);
  const x = new ort.Tensor("float16", data, [n, 4]);
  // Node 24: onnxruntime-common rewraps the bits as a Float16Array, which the 1.30 binding
  // reads as 0 bytes (packages/onnx/src/simple.test.ts); give it the Uint16Array back.
  if (!(x.data instanceof Uint16Array)) Object.defineProperty(x, "data", { value: data });
  const y = (await fp16Session.run({ x })).y as ort.Tensor;
  const out = y.data as ArrayBufferView;
  return Array.from(new Uint16Array(out.buffer, out.byteOffset, out.byteLength / 2));
}

async function submitJson(model: string, x: Record<string, unknown>, wait = WAIT) {
  return fleet.request("POST", `/v1/jobs?wait=${wait}`, { model, inputs: { x } });
}

/** A KServe binary body built by hand: JSON header, then the tensor's bytes. */
async function submitBinary(model: string, datatype: string, bits: number[], n = bits.length / 4) {
  const bytes = Buffer.from(Uint16Array.from(bits).buffer);
  const head = Buffer.from(
    JSON.stringify({
      model,
      inputs: [{ name: "x", datatype, shape: [n, 4], parameters: { binary_data_size: bytes.length } }],
      parameters: { binary_data_output: true },
    }),
  );
  const res = await fetch(`${fleet.apiUrl}/v1/jobs?wait=${WAIT}`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${fleet.apiKey}`,
      "content-type": "application/octet-stream",
      "inference-header-content-length": String(head.length),
    },
    body: Buffer.concat([head, bytes]),
  });
  const body = Buffer.from(await res.arrayBuffer());
  if (res.headers.get("content-type") !== "application/octet-stream") {
    return { status: res.status, json: JSON.parse(body.toString("utf8")) as Loose, tensor: undefined };
  }
  const len = Number(res.headers.get("inference-header-content-length"));
  const json = JSON.parse(body.subarray(0, len).toString("utf8")) as Loose;
  return { status: res.status, json, tensor: body.subarray(len) };
}

function expectCompleted(r: { status: number; json: Loose }) {
  expect([r.status, r.json.status], JSON.stringify(r.json)).toEqual([200, "completed"]);
}

describe("float16", () => {
  // 1, -2, the largest finite, its negative, the smallest subnormal, the largest subnormal, -0, +0,
  // the smallest normal, 0.1 (rounded), 1 + 2^-10, a negative subnormal.
  const bits = [0x3c00, 0xc000, 0x7bff, 0xfbff, 0x0001, 0x03ff, 0x8000, 0x0000, 0x0400, 0x2e66, 0x3c01, 0x8001];

  it("runs base64 (JSON) and binary bodies; outputs are bit-equal to a direct onnxruntime run", async () => {
    const direct = await directFp16(bits, 3);
    expect(direct).toEqual(bits);
    const json = await submitJson("fp16", { dtype: "float16", shape: [3, 4], data: b64(bits) });
    expectCompleted(json);
    expect(json.json.result.outputs.y.dtype).toBe("float16");
    expect(json.json.result.outputs.y.shape).toEqual([3, 4]);
    expect(bitsOf(json.json.result.outputs.y.data)).toEqual(direct);

    const bin = await submitBinary("fp16", "FP16", bits);
    expectCompleted(bin);
    expect(bin.json.result.outputs).toEqual([
      { name: "y", datatype: "FP16", shape: [3, 4], parameters: { binary_data_size: 24 } },
    ]);
    expect(Array.from(new Uint16Array(new Uint8Array(bin.tensor as Buffer).buffer))).toEqual(direct);
  });

  it("takes JSON numbers, rounded to nearest even on the way in", async () => {
    // 1 + 2^-11 is a tie (to 1.0, even); 1 + 3·2^-11 another (to 1 + 2^-9); ±2^-25 tie to ±0.
    const r = await submitJson("fp16", {
      dtype: "float16",
      shape: [1, 4],
      data: [1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -25, -(2 ** -25)],
    });
    expectCompleted(r);
    expect(bitsOf(r.json.result.outputs.y.data)).toEqual([0x3c00, 0x3c02, 0x0000, 0x8000]);
  });

  it("batches jobs into one run and splits the outputs back, each job's bits its own", async () => {
    const jobs = [bits.slice(0, 4), bits.slice(4, 8), bits.slice(8, 12)];
    const rs = await Promise.all(
      jobs.map((j, k) =>
        k === 1
          ? submitBinary("fp16", "FP16", j)
          : submitJson("fp16", { dtype: "float16", shape: [1, 4], data: b64(j) }),
      ),
    );
    for (const [k, r] of rs.entries()) {
      expectCompleted(r);
      const out =
        "tensor" in r && r.tensor
          ? Array.from(new Uint16Array(new Uint8Array(r.tensor).buffer))
          : bitsOf(r.json.result.outputs.y.data);
      expect(out, `job ${k}`).toEqual(jobs[k]);
    }
  });
});

describe("NaN and Inf", () => {
  const cases: [string, string, string, number[]][] = [
    ["float16 +Inf", "fp16", "float16", [0, 0x7c00, 0, 0]],
    ["float16 -Inf", "fp16", "float16", [0xfc00, 0, 0, 0]],
    ["float16 NaN", "fp16", "float16", [0, 0, 0x7e00, 0]],
    ["float16 NaN with a payload", "fp16", "float16", [0, 0, 0, 0xfc01]],
    ["bfloat16 +Inf", "bf16", "bfloat16", [0, 0x7f80, 0, 0]],
    ["bfloat16 -Inf", "bf16", "bfloat16", [0xff80, 0, 0, 0]],
    ["bfloat16 NaN", "bf16", "bfloat16", [0, 0, 0x7fc0, 0]],
    ["bfloat16 NaN with a payload", "bf16", "bfloat16", [0, 0, 0, 0xff81]],
  ];

  it.each(cases)(
    "%s is refused with TENSOR_NON_FINITE as JSON and as binary; nothing is queued",
    async (_l, model, dtype, bits) => {
      const before = (await queueCounts(fleet, model)).total;
      const json = await submitJson(model, { dtype, shape: [1, 4], data: b64(bits) });
      expect([json.status, json.json.error?.code]).toEqual([422, "TENSOR_NON_FINITE"]);
      const bin = await submitBinary(model, dtype === "float16" ? "FP16" : "BF16", bits);
      expect([bin.status, bin.json.error?.code]).toEqual([422, "TENSOR_NON_FINITE"]);
      expect(bin.json.error.message).toMatch(/element \d is NaN or infinite/);
      expect((await queueCounts(fleet, model)).total).toBe(before);
    },
  );

  it("a JSON number past float16's range becomes Inf and is refused", async () => {
    const r = await submitJson("fp16", { dtype: "float16", shape: [1, 4], data: [1, 65520, 0, 0] });
    expect([r.status, r.json.error?.code]).toEqual([422, "TENSOR_NON_FINITE"]);
  });
});

describe("manifest ranges", () => {
  it("compare each float16 value exactly: 1 + 2^-10 is past [-1, 1], a number that rounds to 1 is not", async () => {
    const over = await submitBinary("fp16-ranged", "FP16", [0x3c00, 0x3c01, 0, 0]);
    expect([over.status, over.json.error?.code]).toEqual([422, "TENSOR_OUT_OF_RANGE"]);
    expect(over.json.error.message).toMatch(/element 1 is outside \[-1, 1\]/);
    const json = await submitJson("fp16-ranged", { dtype: "float16", shape: [1, 4], data: [-1, 1.0004, 0.5, 0] });
    expectCompleted(json);
    expect(bitsOf(json.json.result.outputs.y.data)).toEqual([0xbc00, 0x3c00, 0x3800, 0]);
  });

  it("compare each bfloat16 value exactly", async () => {
    // 0x4396 is 300, the bound; 0x4397 is 302.
    const ok = await submitBinary("bf16", "BF16", [0x4396, 0xc396, 0, 0]);
    expectCompleted(ok);
    const over = await submitBinary("bf16", "BF16", [0, 0x4397, 0, 0]);
    expect([over.status, over.json.error?.code]).toEqual([422, "TENSOR_OUT_OF_RANGE"]);
    const json = await submitJson("bf16", { dtype: "bfloat16", shape: [1, 4], data: [0, 0, -310, 0] });
    expect([json.status, json.json.error?.code]).toEqual([422, "TENSOR_OUT_OF_RANGE"]);
  });
});

describe("bfloat16", () => {
  it("is what clients send to a float32 model input, as its signed manifest says", async () => {
    const models = (await fleet.request("GET", "/v1/models")).json.models as Loose[];
    const spec = models.find((m) => m.name === "bf16").versions[0];
    expect(JSON.stringify(spec)).toContain('"dtype":"bfloat16"');
    const raw = await fleet.ctx.registry.getManifest("bf16", "1");
    expect((raw as Loose).manifest.inputs[0]).toMatchObject({ name: "x", dtype: "bfloat16", modelDtype: "float32" });
    expect((raw as Loose).manifest.outputs[0]).toMatchObject({ name: "y", dtype: "float32" });
  });

  it("is widened exactly to float32: the output equals a direct float32 run on bits << 16", async () => {
    // 1, -2, 3.140625, the smallest subnormal, -0, the largest value in range, 1/3 rounded, 2^-126.
    const bits = [0x3f80, 0xc000, 0x4049, 0x0001, 0x8000, 0x4396, 0x3eab, 0x0080];
    const widened = new Float32Array(new Uint32Array(bits.map((b) => b << 16)).buffer);
    const direct = (await f32Session.run({ x: new ort.Tensor("float32", widened, [2, 4]) })).y as ort.Tensor;
    const want = Buffer.from((direct.data as Float32Array).buffer).toString("base64");

    const bin = await submitBinary("bf16", "BF16", bits);
    expectCompleted(bin);
    expect(bin.json.result.outputs[0]).toMatchObject({ name: "y", datatype: "FP32", shape: [2, 4] });
    expect((bin.tensor as Buffer).toString("base64")).toBe(want);

    const json = await submitJson("bf16", { dtype: "bfloat16", shape: [2, 4], data: b64(bits) });
    expectCompleted(json);
    expect(json.json.result.outputs.y).toEqual({ dtype: "float32", shape: [2, 4], data: want });

    // JSON numbers are rounded to bfloat16 first (1/3 → 0x3eab), as the client's own cast would.
    const nums = await submitJson("bf16", { dtype: "bfloat16", shape: [1, 4], data: [1, -2, 1 / 3, 2 ** -126] });
    expectCompleted(nums);
    const y = new Float32Array(new Uint8Array(Buffer.from(nums.json.result.outputs.y.data, "base64")).buffer);
    expect(Array.from(y)).toEqual([1, -2, Array.from(widened)[6], 2 ** -126]);
  });

  it("sent as float32 to a bfloat16 input is refused with TENSOR_DTYPE_MISMATCH", async () => {
    const r = await submitJson("bf16", { dtype: "float32", shape: [1, 4], data: [1, 2, 3, 4] });
    expect([r.status, r.json.error?.code]).toEqual([422, "TENSOR_DTYPE_MISMATCH"]);
  });

  it("a model whose own input or output is bfloat16 is refused at seal, saying what works instead", async () => {
    const seal = (bytes: Uint8Array, inputs: Record<string, { dtype: "bfloat16" }> = {}) =>
      fleet.publish(bytes, { name: "bf16-native", version: "1", spec: { inputs } });
    await expect(seal(buildIdentityModel("bfloat16", ["N", 4]))).rejects.toMatchObject({
      code: "MANIFEST_INVALID",
      message: expect.stringMatching(
        /input 'x' is bfloat16, which onnxruntime-node cannot feed: export the model with a float32 input/,
      ),
    });
    await expect(seal(buildCastModel("bfloat16"))).rejects.toMatchObject({
      code: "MANIFEST_INVALID",
      message: expect.stringMatching(/output 'y' is bfloat16, which onnxruntime-node cannot return/),
    });
    // Only a float32 input can be sent as bfloat16 (a float16 one cannot hold bfloat16's range).
    await expect(seal(buildIdentityModel("float16", ["N", 4]), { x: { dtype: "bfloat16" } })).rejects.toMatchObject({
      code: "MANIFEST_INVALID",
      message: expect.stringMatching(/only a float32 input can be sent as bfloat16/),
    });
    expect(await fleet.ctx.registry.getManifest("bf16-native", "1")).toBeNull();
  });
});

describe("the worker's own scan of stored bytes", () => {
  let queues: JobQueues;
  const blocking: Redis[] = [];
  beforeAll(() => {
    queues = new JobQueues(
      fleet.redis,
      () => {
        const r = new Redis(redisUrl(), { maxRetriesPerRequest: null });
        blocking.push(r);
        return r;
      },
      fleet.redis,
      { prefix: fleet.prefix, resultTtlMs: 60_000, failedTtlMs: 60_000, attempts: 3, backoffMs: 10 },
    );
  });
  afterAll(async () => {
    await queues?.close();
    for (const r of blocking) r.disconnect();
  });

  /** A job written into Redis as a Redis writer could, past the API's validation. */
  async function writeIntoRedis(model: string, dtype: "float16" | "bfloat16", bits: number[]): Promise<string> {
    const id = `${model}.${randomBytes(18).toString("base64url")}`;
    const data: JobData = {
      tenant: "acme",
      model,
      version: "1",
      inputs: [{ name: "x", dtype, shape: [1, 4] }],
      batch: 1,
      inputBytes: 8,
      timeoutMs: 5000,
      acceptedAt: Date.now(),
      deadline: Date.now() + 60_000,
      requestId: "written-into-redis",
    };
    const inputs = Buffer.from(Uint16Array.from(bits).buffer);
    await queues.enqueueMany(model, [{ id, data, inputs, priority: "normal" }]);
    return id;
  }

  it.each([
    ["float16 +Inf", "fp16", "float16", [0, 0x7c00, 0, 0], "TENSOR_NON_FINITE"],
    ["float16 NaN", "fp16", "float16", [0, 0, 0xfe00, 0], "TENSOR_NON_FINITE"],
    ["bfloat16 -Inf", "bf16", "bfloat16", [0xff80, 0, 0, 0], "TENSOR_NON_FINITE"],
    ["bfloat16 NaN", "bf16", "bfloat16", [0, 0, 0, 0x7fc1], "TENSOR_NON_FINITE"],
    ["a float16 past the range", "fp16-ranged", "float16", [0, 0, 0x4000, 0], "TENSOR_OUT_OF_RANGE"],
  ] as const)("%s fails the job with %s before it runs", async (_l, model, dtype, bits, code) => {
    const id = await writeIntoRedis(model, dtype, [...bits]);
    const r = await fleet.request("GET", `/v1/jobs/${id}?wait=${WAIT}`);
    expect([r.status, r.json.status, r.json.error?.code]).toEqual([200, "failed", code]);
  });

  it("the same bytes without the fault run", async () => {
    const id = await writeIntoRedis("fp16", "float16", [0x3c00, 0, 0x7bff, 0x8001]);
    const r = await fleet.request("GET", `/v1/jobs/${id}?wait=${WAIT}`);
    expectCompleted(r);
    expect(bitsOf(r.json.result.outputs.y.data)).toEqual([0x3c00, 0, 0x7bff, 0x8001]);
  });
});
