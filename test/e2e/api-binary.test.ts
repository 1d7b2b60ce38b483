import { readFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { OCR_CLS_PATH } from "@citadel/cli/sample-models";
import { buildIdentityModel, buildMultiInputModel } from "@citadel/onnx";
import { keys } from "@citadel/queue";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { errorEnvelope, inlineRefs, publishModel, queueCounts } from "../support/api-kit.js";
import { b64, decodeF32, type Loose, startTestFleet, type TestFleet } from "../support/fleet.js";

// Issue 11 points 1 and 2: KServe v2 binary bodies in and out of the job routes, and
// POST /v1/jobs?wait=ms, against a real fleet (Redis, BullMQ, onnxruntime).

const BODY_LIMIT = 1024 * 1024;
const MAX_WAIT = 120_000;
const OCR = { model: "ocr-cls", dims: [3, 48, 192] } as const;
const ocrBytes = new Uint8Array(readFileSync(OCR_CLS_PATH));
const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

let fleet: TestFleet;
let ocrSession: ort.InferenceSession;
let multiSession: ort.InferenceSession;

beforeAll(async () => {
  fleet = await startTestFleet({
    workers: 1,
    env: { BODY_LIMIT_BYTES: String(BODY_LIMIT), MAX_WAIT_MS: String(MAX_WAIT), BULK_MAX_JOBS: "8" },
  });
  await publishModel(fleet, ocrBytes, {
    name: OCR.model,
    version: "1.0.0",
    spec: { maxBatch: 8, maxQueueDelayMs: 2, inputs: { x: { range: [-1, 1], maxDim: 1024 } } },
  });
  await publishModel(fleet, buildMultiInputModel(), { name: "multi", version: "1", spec: { maxBatch: 4 } });
  // Refusals are counted on a model and tenant nothing else uses.
  await publishModel(fleet, buildIdentityModel("float32", ["N", 4]), {
    name: "quiet",
    version: "1",
    spec: { maxBatch: 8 },
  });
  ocrSession = await ort.InferenceSession.create(ocrBytes);
  multiSession = await ort.InferenceSession.create(buildMultiInputModel());
});
afterAll(async () => {
  await fleet?.close();
});

function randomInput(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (s / 2147483648) * 2 - 1;
  });
}

const bytesOf = (a: Float32Array | BigInt64Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** A binary body built by hand (not with the codec under test): JSON header, then the bytes in order. */
function binaryBody(header: unknown, parts: Uint8Array[]): { body: Buffer; headerLength: number } {
  const head = Buffer.from(JSON.stringify(header), "utf8");
  return { body: Buffer.concat([head, ...parts]), headerLength: head.length };
}

function ocrHeader(n: number, extra: Record<string, unknown> = {}) {
  const size = n * OCR.dims.reduce((a, b) => a * b, 1) * 4;
  return {
    model: OCR.model,
    inputs: [{ name: "x", datatype: "FP32", shape: [n, ...OCR.dims], parameters: { binary_data_size: size } }],
    ...extra,
  };
}

interface Reply {
  status: number;
  headers: Headers;
  json: Loose;
  /** A binary answer's tensors by name, when the body was binary. */
  tensors?: Map<string, { datatype: string; shape: number[]; bytes: Buffer }>;
}

/** Reads an answer; a binary one is cut by hand at Inference-Header-Content-Length and binary_data_size. */
async function read(res: Response): Promise<Reply> {
  const buf = Buffer.from(await res.arrayBuffer());
  if (res.headers.get("content-type") !== "application/octet-stream") {
    return { status: res.status, headers: res.headers, json: JSON.parse(buf.toString("utf8")) };
  }
  const n = Number(res.headers.get("inference-header-content-length"));
  const json = JSON.parse(buf.subarray(0, n).toString("utf8"));
  const tensors = new Map<string, { datatype: string; shape: number[]; bytes: Buffer }>();
  let at = n;
  for (const o of json.result.outputs as Loose[]) {
    const size = o.parameters.binary_data_size as number;
    tensors.set(o.name, { datatype: o.datatype, shape: o.shape, bytes: buf.subarray(at, at + size) });
    at += size;
  }
  expect(at).toBe(buf.length);
  return { status: res.status, headers: res.headers, json, tensors };
}

async function post(
  url: string,
  b: { body: Buffer; headerLength?: number | string },
  headers: Record<string, string> = {},
): Promise<Reply> {
  const res = await fetch(`${fleet.apiUrl}${url}`, {
    method: "POST",
    headers: {
      ...bearer(fleet.apiKey),
      "content-type": "application/octet-stream",
      ...(b.headerLength !== undefined ? { "inference-header-content-length": String(b.headerLength) } : {}),
      ...headers,
    },
    body: b.body,
  });
  return read(res);
}

async function get(url: string, headers: Record<string, string> = {}): Promise<Reply> {
  return read(await fetch(`${fleet.apiUrl}${url}`, { headers: { ...bearer(fleet.apiKey), ...headers } }));
}

async function finalView(id: string, headers: Record<string, string> = {}): Promise<Reply> {
  for (;;) {
    const r = await get(`/v1/jobs/${id}?wait=${MAX_WAIT}`, headers);
    if (r.status !== 200 || (r.json.status !== "queued" && r.json.status !== "active")) return r;
  }
}

function expectClose(have: Float32Array, want: Float32Array): void {
  expect(have.length).toBe(want.length);
  for (let k = 0; k < want.length; k++)
    expect(Math.abs((have[k] as number) - (want[k] as number))).toBeLessThanOrEqual(1e-6);
}

const f32 = (b: Buffer) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));

async function directOcr(x: Float32Array, n: number) {
  const out = await ocrSession.run({ x: new ort.Tensor("float32", x, [n, ...OCR.dims]) });
  const name = ocrSession.outputNames[0] as string;
  return { name, dims: [...(out[name]?.dims ?? [])], data: out[name]?.data as Float32Array };
}

describe("binary submit and results", () => {
  it("runs a binary job with ?wait and answers its result binary (binary_data_output), equal to a direct run", async () => {
    const x = randomInput(2 * 3 * 48 * 192, 11);
    const r = await post(
      `/v1/jobs?wait=${MAX_WAIT}`,
      binaryBody(ocrHeader(2, { parameters: { binary_data_output: true } }), [bytesOf(x)]),
    );
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.headers.get("content-type")).toBe("application/octet-stream");
    expect(r.json).toMatchObject({ status: "completed", model: OCR.model, version: "1.0.0" });
    expect(r.json.result.batchSize).toBe(2);
    const want = await directOcr(x, 2);
    const got = r.tensors?.get(want.name);
    expect(got?.datatype).toBe("FP32");
    expect(got?.shape).toEqual(want.dims);
    expectClose(f32(got?.bytes ?? Buffer.alloc(0)), want.data);
    // The same job read again: JSON by default, binary when Accept asks; the same values.
    const asJson = await get(`/v1/jobs/${r.json.id}`);
    expect(asJson.headers.get("content-type")).toMatch(/^application\/json/);
    expect(asJson.json.result.outputs[want.name].shape).toEqual(want.dims);
    expectClose(decodeF32(asJson.json.result.outputs[want.name].data), want.data);
    const asBinary = await get(`/v1/jobs/${r.json.id}`, { accept: "application/octet-stream" });
    expect(asBinary.headers.get("content-type")).toBe("application/octet-stream");
    expect(asBinary.tensors?.get(want.name)?.bytes.equals(got?.bytes ?? Buffer.alloc(0))).toBe(true);
    // A client that prefers JSON gets JSON.
    const prefersJson = await get(`/v1/jobs/${r.json.id}`, {
      accept: "application/json, application/octet-stream;q=0.5",
    });
    expect(prefersJson.headers.get("content-type")).toMatch(/^application\/json/);
  });

  it("runs a binary job sent gzip (Content-Encoding), its header length counting the inflated body", async () => {
    const { gzipSync } = await import("node:zlib");
    const x = randomInput(3 * 48 * 192, 13);
    const b = binaryBody(ocrHeader(1), [bytesOf(x)]);
    const r = await post(
      `/v1/jobs?wait=${MAX_WAIT}`,
      { body: gzipSync(b.body), headerLength: b.headerLength },
      { "content-encoding": "gzip" },
    );
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    const want = await directOcr(x, 1);
    expectClose(decodeF32(r.json.result.outputs[want.name].data), want.data);
  });

  it("answers a binary ?wait submit as JSON unless the client asks for binary", async () => {
    const x = randomInput(3 * 48 * 192, 12);
    const r = await post(`/v1/jobs?wait=${MAX_WAIT}`, binaryBody(ocrHeader(1), [bytesOf(x)]));
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^application\/json/);
    const want = await directOcr(x, 1);
    expectClose(decodeF32(r.json.result.outputs[want.name].data), want.data);
    // Accept alone asks for binary too.
    const viaAccept = await post(`/v1/jobs?wait=${MAX_WAIT}`, binaryBody(ocrHeader(1), [bytesOf(x)]), {
      accept: "application/octet-stream",
    });
    expect([viaAccept.status, viaAccept.headers.get("content-type")]).toEqual([200, "application/octet-stream"]);
    expectClose(f32(viaAccept.tensors?.get(want.name)?.bytes ?? Buffer.alloc(0)), want.data);
  });

  it("answers a JSON submit with ?wait: 200 and the result when done in time", async () => {
    const x = randomInput(3 * 48 * 192, 13);
    const r = await fleet.request("POST", `/v1/jobs?wait=${MAX_WAIT}`, {
      model: OCR.model,
      inputs: { x: { dtype: "float32", shape: [1, ...OCR.dims], data: b64(x) } },
    });
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.json.status).toBe("completed");
    const want = await directOcr(x, 1);
    expectClose(decodeF32(r.json.result.outputs[want.name].data), want.data);
    // The view the wait built from the completion event is the job's view, times included.
    const later = await fleet.request("GET", `/v1/jobs/${r.json.id}`);
    expect(r.json).toEqual(later.json);
    expect(Object.keys(r.json).sort()).toEqual(
      ["createdAt", "finishedAt", "id", "model", "result", "startedAt", "status", "version"].sort(),
    );
    // Without ?wait: 202 as before.
    const plain = await fleet.request("POST", "/v1/jobs", {
      model: OCR.model,
      inputs: { x: { dtype: "float32", shape: [1, ...OCR.dims], data: b64(x) } },
    });
    expect([plain.status, plain.json.status]).toEqual([202, "queued"]);
  });

  it("runs a binary bulk: each job's inputs cut in order, several inputs and dtypes, equal to direct runs", async () => {
    const x1 = randomInput(3 * 48 * 192, 21);
    const x2 = randomInput(2 * 3 * 48 * 192, 22);
    const a = Float32Array.from({ length: 8 }, (_, i) => i - 3.5);
    const b = BigInt64Array.from([7n, -2n]);
    const header = {
      jobs: [
        ocrHeader(1),
        {
          model: "multi",
          version: "1",
          inputs: [
            { name: "a", datatype: "FP32", shape: [2, 4], parameters: { binary_data_size: 32 } },
            { name: "b", datatype: "INT64", shape: [2, 1], parameters: { binary_data_size: 16 } },
          ],
          outputs: [{ name: "y" }],
        },
        ocrHeader(2, { priority: "low", timeoutMs: 5000 }),
      ],
    };
    const r = await post("/v1/jobs/bulk", binaryBody(header, [bytesOf(x1), bytesOf(a), bytesOf(b), bytesOf(x2)]));
    expect(r.status, JSON.stringify(r.json)).toBe(202);
    const items = r.json.jobs as Loose[];
    expect(items.map((i) => [i.index, i.status, i.model])).toEqual([
      [0, "queued", OCR.model],
      [1, "queued", "multi"],
      [2, "queued", OCR.model],
    ]);
    const [v1, vm, v2] = await Promise.all(items.map((i) => finalView(i.id, { accept: "application/octet-stream" })));
    for (const [v, x, n] of [
      [v1, x1, 1],
      [v2, x2, 2],
    ] as const) {
      const want = await directOcr(x, n);
      expect(v?.json.status).toBe("completed");
      expectClose(f32(v?.tensors?.get(want.name)?.bytes ?? Buffer.alloc(0)), want.data);
    }
    const direct = await multiSession.run({
      a: new ort.Tensor("float32", a, [2, 4]),
      b: new ort.Tensor("int64", b, [2, 1]),
    });
    expect(vm?.json.status).toBe("completed");
    expect(vm?.tensors?.get("y")?.shape).toEqual([2, 4]);
    expectClose(f32(vm?.tensors?.get("y")?.bytes ?? Buffer.alloc(0)), direct.y?.data as Float32Array);
  });

  it("answers a bulk item that fails validation on its own; the others are queued", async () => {
    const x = randomInput(3 * 48 * 192, 31);
    const bad = randomInput(3 * 48 * 192, 32);
    bad[5] = 3; // outside the manifest's [-1, 1]
    const r = await post(
      "/v1/jobs/bulk",
      binaryBody({ jobs: [ocrHeader(1), ocrHeader(1)] }, [bytesOf(x), bytesOf(bad)]),
    );
    expect(r.status).toBe(202);
    const items = r.json.jobs as Loose[];
    expect(items[0]).toMatchObject({ index: 0, status: "queued" });
    expect(items[1]).toMatchObject({ index: 1, status: 422, error: { code: "TENSOR_OUT_OF_RANGE" } });
  });

  it("answers 202 with the accepted body when the job is not final in time (no worker running)", async () => {
    await Promise.all(fleet.workers.splice(0).map((w) => w.close()));
    const x = randomInput(3 * 48 * 192, 41);
    const bin = await post("/v1/jobs?wait=300", binaryBody(ocrHeader(1), [bytesOf(x)]), {
      accept: "application/octet-stream",
    });
    expect([bin.status, bin.headers.get("content-type")]).toEqual([202, expect.stringMatching(/^application\/json/)]);
    expect(bin.json).toEqual({ id: expect.any(String), status: "queued", model: OCR.model, version: "1.0.0" });
    const json = await fleet.request("POST", "/v1/jobs?wait=0", {
      model: OCR.model,
      inputs: { x: { dtype: "float32", shape: [1, ...OCR.dims], data: b64(x) } },
    });
    expect([json.status, json.json.status]).toEqual([202, "queued"]);
    // Non-final states are JSON even when binary is asked for.
    const queued = await get(`/v1/jobs/${bin.json.id}`, { accept: "application/octet-stream" });
    expect([queued.status, queued.json.status, queued.headers.get("content-type")]).toEqual([
      200,
      "queued",
      expect.stringMatching(/^application\/json/),
    ]);
    await fleet.startWorker();
    const done = await finalView(bin.json.id, { accept: "application/octet-stream" });
    expect(done.json.status).toBe("completed");
    const want = await directOcr(x, 1);
    expectClose(f32(done.tensors?.get(want.name)?.bytes ?? Buffer.alloc(0)), want.data);
  });

  it("documents both bodies and the binary answers in the OpenAPI document", async () => {
    const doc = (await (await fetch(`${fleet.apiUrl}/openapi.json`)).json()) as Loose;
    for (const path of ["/v1/jobs", "/v1/jobs/bulk"]) {
      const content = doc.paths[path].post.requestBody.content;
      expect(Object.keys(content).sort()).toEqual(["application/json", "application/octet-stream"]);
      expect(content["application/octet-stream"].schema).toMatchObject({ type: "string", format: "binary" });
      const header = inlineRefs(doc, content["application/octet-stream"].schema["x-inference-header"]);
      expect(JSON.stringify(header)).toContain("binary_data_size");
      const params = (doc.paths[path].post.parameters as Loose[]).map((p) => `${p.in}:${p.name}`);
      expect(params).toContain("header:inference-header-content-length");
    }
    expect(JSON.stringify(content("/v1/jobs", "post", "200"))).toContain("application/octet-stream");
    expect(JSON.stringify(content("/v1/jobs/{id}", "get", "200"))).toContain("application/octet-stream");
    expect(doc.paths["/v1/jobs"].post.parameters.map((p: Loose) => p.name)).toContain("wait");
    function content(path: string, method: string, status: string): unknown {
      return doc.paths[path][method].responses[status].content;
    }
  });
});

describe("a binary body that does not add up is refused whole (400 + code), with nothing queued or reserved", () => {
  let key = "";
  beforeAll(async () => {
    key = await fleet.addTenant({ id: "bin-refused", models: ["*"] });
  });

  async function state() {
    const [jobs, bytes] = await Promise.all([
      fleet.redis.get(keys.tenantQueuedJobs(fleet.prefix, "bin-refused")),
      fleet.redis.get(keys.tenantQueuedBytes(fleet.prefix, "bin-refused")),
    ]);
    return { queue: (await queueCounts(fleet, "quiet")).total, jobs, bytes };
  }

  const row = new Float32Array([1, 2, 3, 4]);
  const input = (size: number | undefined, extra: Record<string, unknown> = {}) => ({
    name: "x",
    datatype: "FP32",
    shape: [1, 4],
    ...(size === undefined ? {} : { parameters: { binary_data_size: size } }),
    ...extra,
  });
  const job = (inputs: unknown[], extra: Record<string, unknown> = {}) => ({ model: "quiet", inputs, ...extra });
  const ok = binaryBody(job([input(16)]), [bytesOf(row)]);

  const cases: [string, string, { body: Buffer; headerLength?: number | string }, string, number?][] = [
    ["no Inference-Header-Content-Length", "/v1/jobs", { body: ok.body }, "BINARY_HEADER_LENGTH_INVALID"],
    ["a negative header length", "/v1/jobs", { body: ok.body, headerLength: -1 }, "BINARY_HEADER_LENGTH_INVALID"],
    ["a fractional header length", "/v1/jobs", { body: ok.body, headerLength: "12.5" }, "BINARY_HEADER_LENGTH_INVALID"],
    ["a non-numeric header length", "/v1/jobs", { body: ok.body, headerLength: "abc" }, "BINARY_HEADER_LENGTH_INVALID"],
    [
      "a header length past the body",
      "/v1/jobs",
      { body: ok.body, headerLength: ok.body.length + 1 },
      "BINARY_HEADER_LENGTH_INVALID",
    ],
    ["a header that is not JSON", "/v1/jobs", { body: ok.body, headerLength: ok.headerLength - 1 }, "MALFORMED_JSON"],
    [
      "a header with a duplicate key",
      "/v1/jobs",
      (() => {
        const head = Buffer.from(`{"model":"quiet","model":"quiet","inputs":[${JSON.stringify(input(16))}]}`);
        return { body: Buffer.concat([head, bytesOf(row)]), headerLength: head.length };
      })(),
      "MALFORMED_JSON",
    ],
    [
      "a header with an unknown field",
      "/v1/jobs",
      binaryBody(job([input(16)], { colour: "red" }), [bytesOf(row)]),
      "VALIDATION_FAILED",
    ],
    [
      "an input with an unknown field",
      "/v1/jobs",
      binaryBody(job([input(16, { data: [1] })]), [bytesOf(row)]),
      "VALIDATION_FAILED",
    ],
    [
      "an unknown datatype",
      "/v1/jobs",
      binaryBody(job([input(16, { datatype: "UINT32" })]), [bytesOf(row)]),
      "VALIDATION_FAILED",
    ],
    ["a negative binary_data_size", "/v1/jobs", binaryBody(job([input(-16)]), [bytesOf(row)]), "VALIDATION_FAILED"],
    [
      "an input without binary_data_size",
      "/v1/jobs",
      binaryBody(job([input(undefined)]), [bytesOf(row)]),
      "BINARY_DATA_SIZE_MISSING",
    ],
    [
      "sizes larger than the bytes sent",
      "/v1/jobs",
      binaryBody(job([input(16)]), [bytesOf(row).subarray(0, 12)]),
      "BINARY_DATA_SIZE_MISMATCH",
    ],
    [
      "bytes left over after the sizes",
      "/v1/jobs",
      binaryBody(job([input(16)]), [bytesOf(row), Buffer.from([0])]),
      "BINARY_DATA_SIZE_MISMATCH",
    ],
    [
      "a size that does not match dtype × shape",
      "/v1/jobs",
      binaryBody(job([input(12)]), [bytesOf(row).subarray(0, 12)]),
      "TENSOR_DATA_LENGTH_MISMATCH",
      422,
    ],
    [
      "a bulk job without binary_data_size",
      "/v1/jobs/bulk",
      binaryBody({ jobs: [job([input(16)]), job([input(undefined)])] }, [bytesOf(row), bytesOf(row)]),
      "BINARY_DATA_SIZE_MISSING",
    ],
    [
      "a bulk whose sizes leave bytes over",
      "/v1/jobs/bulk",
      binaryBody({ jobs: [job([input(16)]), job([input(16)])] }, [bytesOf(row), bytesOf(row), bytesOf(row)]),
      "BINARY_DATA_SIZE_MISMATCH",
    ],
    [
      "a bulk whose second job is short",
      "/v1/jobs/bulk",
      binaryBody({ jobs: [job([input(16)]), job([input(16)])] }, [bytesOf(row), bytesOf(row).subarray(4)]),
      "BINARY_DATA_SIZE_MISMATCH",
    ],
    [
      "a bulk with one job off its schema",
      "/v1/jobs/bulk",
      binaryBody({ jobs: [job([input(16)]), job([input(16)], { extra: 1 })] }, [bytesOf(row), bytesOf(row)]),
      "VALIDATION_FAILED",
    ],
    [
      "a bulk over BULK_MAX_JOBS",
      "/v1/jobs/bulk",
      binaryBody({ jobs: Array.from({ length: 9 }, () => job([input(16)])) }, Array(9).fill(bytesOf(row))),
      "VALIDATION_FAILED",
    ],
    [
      "a single job sent as a bulk header",
      "/v1/jobs",
      binaryBody({ jobs: [job([input(16)])] }, [bytesOf(row)]),
      "VALIDATION_FAILED",
    ],
  ];

  it.each(cases)("%s", async (_label, url, b, code, status = 400) => {
    const before = await state();
    const r = await post(url, b, bearer(key));
    expect([r.status, errorEnvelope(r.json)?.code], JSON.stringify(r.json)).toEqual([status, code]);
    expect(errorEnvelope(r.json)?.message.length).toBeGreaterThan(5);
    expect(await state()).toEqual(before);
  });

  it("accepts the well-formed body the cases above break (so they test what they claim)", async () => {
    const before = await state();
    const r = await post("/v1/jobs", ok, bearer(key));
    expect(r.status, JSON.stringify(r.json)).toBe(202);
    const after = await state();
    expect(Number(after.jobs ?? 0)).toBe(Number(before.jobs ?? 0) + 1);
    expect(after.queue).toBe(before.queue + 1);
  });

  it("refuses a submit with no body at all (no content type: no schema ran) with 400, nothing queued", async () => {
    const before = await state();
    for (const url of ["/v1/jobs", "/v1/jobs/bulk", "/v1/jobs?wait=10"]) {
      const res = await fetch(`${fleet.apiUrl}${url}`, { method: "POST", headers: bearer(key) });
      const json = (await res.json()) as { error?: { code?: string } };
      expect([url, res.status, json.error?.code]).toEqual([url, 400, "VALIDATION_FAILED"]);
    }
    expect(await state()).toEqual(before);
  });

  it("refuses ?wait out of bounds with 400 before anything is queued", async () => {
    const before = await state();
    for (const q of ["?wait=-1", `?wait=${MAX_WAIT + 1}`, "?wait=abc", "?wait=1.5"]) {
      const r = await post(`/v1/jobs${q}`, ok, bearer(key));
      expect([r.status, errorEnvelope(r.json)?.code]).toEqual([400, "VALIDATION_FAILED"]);
    }
    expect(await state()).toEqual(before);
  });

  it("refuses a streamed binary body over the limit with 413 before reading it whole", async () => {
    const before = await state();
    const url = new URL(fleet.apiUrl);
    const total = 256 * 1024 * 1024;
    const answer = await new Promise<{ status: number; body: string; sent: number }>((resolve, reject) => {
      let sent = 0;
      let answered = false;
      const r = httpRequest(
        {
          host: url.hostname,
          port: url.port,
          method: "POST",
          path: "/v1/jobs",
          headers: {
            ...bearer(key),
            "content-type": "application/octet-stream",
            "inference-header-content-length": "10",
            "transfer-encoding": "chunked",
          },
        },
        (res) => {
          answered = true;
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () =>
            resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8"), sent }),
          );
        },
      );
      r.on("error", (err) => (answered ? undefined : reject(err)));
      const chunk = Buffer.alloc(64 * 1024, 0x3f);
      const pump = () => {
        while (!answered && sent < total) {
          sent += chunk.length;
          if (!r.write(chunk)) {
            r.once("drain", pump);
            return;
          }
        }
        if (!answered) r.end();
      };
      pump();
    });
    expect(answer.status).toBe(413);
    expect(errorEnvelope(JSON.parse(answer.body))?.code).toBe("PAYLOAD_TOO_LARGE");
    expect(answer.sent).toBeLessThan(64 * 1024 * 1024);
    expect(await state()).toEqual(before);
  });
});
