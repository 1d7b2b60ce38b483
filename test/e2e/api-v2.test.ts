import { readFileSync } from "node:fs";
import { OCR_CLS_PATH } from "@citadel/cli/sample-models";
import { buildIdentityModel, buildMultiInputModel } from "@citadel/onnx";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inlineRefs, pollUntil, publishModel, queueCounts, readAudit, startExtraApi } from "../support/api-kit.js";
import { startTestFleet, type TestFleet } from "../support/fleet.js";

// Issue 12 point 1: the Open Inference Protocol (KServe v2) over HTTP under /v2. The client
// here is written from the protocol's text (kserve/open-inference-protocol inference_rest.md
// and the binary tensor data extension), with plain fetch and bodies built by hand: no
// Citadel codec or client code, so the test holds the server to the protocol, not to itself.

const BODY_LIMIT = 1024 * 1024;
const OCR = { name: "ocr-cls", dims: [3, 48, 192] } as const;
const ocrBytes = new Uint8Array(readFileSync(OCR_CLS_PATH));
const multiBytes = buildMultiInputModel();
const flagsBytes = buildIdentityModel("bool", ["N", 3]);

let fleet: TestFleet;
let ocrSession: ort.InferenceSession;
let multiSession: ort.InferenceSession;

beforeAll(async () => {
  fleet = await startTestFleet({ workers: 1, env: { BODY_LIMIT_BYTES: String(BODY_LIMIT), MAX_WAIT_MS: "120000" } });
  await publishModel(fleet, ocrBytes, {
    name: OCR.name,
    version: "1.0.0",
    spec: { maxBatch: 8, maxQueueDelayMs: 2, inputs: { x: { range: [-1, 1], maxDim: 1024 } } },
  });
  await publishModel(fleet, multiBytes, { name: "multi", version: "1", spec: { maxBatch: 4 } });
  await publishModel(fleet, flagsBytes, { name: "flags", version: "1", spec: { maxBatch: 4 } });
  ocrSession = await ort.InferenceSession.create(ocrBytes);
  multiSession = await ort.InferenceSession.create(multiBytes);
});
afterAll(async () => {
  await fleet?.close();
});

interface Reply {
  status: number;
  headers: Headers;
  /** The JSON body, or a binary body's JSON header. */
  json: Record<string, unknown> & { error?: string; outputs?: Output[] };
  /** A binary body's outputs by name, cut by hand at Inference-Header-Content-Length and binary_data_size. */
  binary: Map<string, Buffer>;
}
interface Output {
  name: string;
  datatype: string;
  shape: number[];
  data?: unknown[];
  parameters?: { binary_data_size?: number };
}

async function read(res: Response): Promise<Reply> {
  const buf = Buffer.from(await res.arrayBuffer());
  const headerLength = res.headers.get("inference-header-content-length");
  const binary = new Map<string, Buffer>();
  if (headerLength === null)
    return { status: res.status, headers: res.headers, json: JSON.parse(buf.toString()), binary };
  const n = Number(headerLength);
  const json = JSON.parse(buf.subarray(0, n).toString("utf8"));
  let at = n;
  for (const o of json.outputs as Output[]) {
    const size = o.parameters?.binary_data_size;
    if (size === undefined) continue;
    binary.set(o.name, buf.subarray(at, at + size));
    at += size;
  }
  expect(at, "the binary_data_size values account for every byte").toBe(buf.length);
  return { status: res.status, headers: res.headers, json, binary };
}

const auth = (key = fleet.apiKey) => ({ authorization: `Bearer ${key}` });

async function get(path: string, headers: Record<string, string> = auth()): Promise<Reply> {
  return read(await fetch(`${fleet.apiUrl}${path}`, { headers }));
}

async function inferJson(path: string, body: unknown, headers: Record<string, string> = auth()): Promise<Reply> {
  const res = await fetch(`${fleet.apiUrl}${path}`, {
    method: "POST",
    headers: { ...headers, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return read(res);
}

/** A binary request per the extension: the JSON header, then each binary input's bytes in order. */
async function inferBinary(path: string, header: unknown, parts: Uint8Array[], base = fleet.apiUrl): Promise<Reply> {
  const head = Buffer.from(JSON.stringify(header), "utf8");
  const res = await fetch(`${base}${path}`, {
    method: "POST",
    headers: {
      ...auth(),
      "content-type": "application/octet-stream",
      "inference-header-content-length": String(head.length),
    },
    body: Buffer.concat([head, ...parts]),
  });
  return read(res);
}

const f32 = (b: Buffer) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
const raw = (a: Float32Array | BigInt64Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

function expectClose(have: ArrayLike<number>, want: ArrayLike<number>): void {
  expect(have.length).toBe(want.length);
  for (let k = 0; k < want.length; k++) expect(Math.abs(Number(have[k]) - Number(want[k]))).toBeLessThanOrEqual(1e-6);
}

/** Every protocol error is {"error": "<CODE>: message"}. */
function expectError(r: Reply, status: number, code: string): void {
  expect(r.status, JSON.stringify(r.json)).toBe(status);
  expect(Object.keys(r.json)).toEqual(["error"]);
  expect(r.json.error).toMatch(new RegExp(`^${code}: .+`));
}

function randomInput(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (s / 2147483648) * 2 - 1;
  });
}

describe("health and metadata", () => {
  it("answers live and ready without a key, like /healthz and /readyz", async () => {
    const live = await get("/v2/health/live", {});
    expect([live.status, live.json]).toEqual([200, { live: true }]);
    const ready = await get("/v2/health/ready", {});
    expect([ready.status, ready.json]).toEqual([200, { ready: true }]);
  });

  it("describes the server, and names the binary tensor data extension", async () => {
    const r = await get("/v2");
    expect(r.status).toBe(200);
    expect(r.json).toEqual({
      name: "citadel",
      version: expect.stringMatching(/^\d+\.\d+\.\d+/),
      extensions: ["binary_tensor_data"],
    });
  });

  it("describes a model from its manifest: KServe datatypes, -1 for dynamic dimensions, its versions", async () => {
    const want = {
      name: "multi",
      versions: ["1"],
      platform: "onnxruntime_onnx",
      inputs: [
        { name: "a", datatype: "FP32", shape: [-1, 4] },
        { name: "b", datatype: "INT64", shape: [-1, 1] },
      ],
      outputs: [{ name: "y", datatype: "FP32", shape: [-1, 4] }],
    };
    expect(await get("/v2/models/multi")).toMatchObject({ status: 200, json: want });
    expect(await get("/v2/models/multi/versions/1")).toMatchObject({ status: 200, json: want });
    const flags = await get("/v2/models/flags");
    expect(flags.json.inputs).toEqual([{ name: "x", datatype: "BOOL", shape: [-1, 3] }]);
    const ocr = await get(`/v2/models/${OCR.name}`);
    expect((ocr.json.inputs as Output[])[0]).toMatchObject({ name: "x", datatype: "FP32" });
    expect((ocr.json.inputs as Output[])[0]?.shape[0]).toBe(-1);
  });

  it("says a served model is ready, per model and per version", async () => {
    expect(await get("/v2/models/multi/ready")).toMatchObject({ status: 200, json: { name: "multi", ready: true } });
    const v = await get("/v2/models/multi/versions/1/ready");
    expect([v.status, v.json]).toEqual([200, { name: "multi", ready: true }]);
  });

  it("answers 404 in the protocol's shape for an unknown model or version, and for one the tenant may not use", async () => {
    expectError(await get("/v2/models/nope"), 404, "MODEL_NOT_FOUND");
    expectError(await get("/v2/models/multi/versions/9"), 404, "MODEL_NOT_FOUND");
    expectError(await get("/v2/models/nope/ready"), 404, "MODEL_NOT_FOUND");
    const key = await fleet.addTenant({ id: "v2-only-flags", models: ["flags"] });
    expectError(await get("/v2/models/multi", auth(key)), 404, "MODEL_NOT_FOUND");
    expect((await get("/v2/models/flags", auth(key))).status).toBe(200);
    const infer = await inferJson(
      "/v2/models/multi/infer",
      { inputs: [{ name: "a", datatype: "FP32", shape: [1, 4], data: [1, 2, 3, 4] }] },
      auth(key),
    );
    expectError(infer, 404, "MODEL_NOT_FOUND");
  });

  it("answers 401 in the protocol's shape without a key or with a wrong one", async () => {
    expectError(await get("/v2", {}), 401, "UNAUTHORIZED");
    expectError(await get("/v2/models/multi", { authorization: "Bearer wrong" }), 401, "UNAUTHORIZED");
    expectError(await inferJson("/v2/models/multi/infer", { inputs: [] }, {}), 401, "UNAUTHORIZED");
  });
});

describe("infer", () => {
  it("runs a JSON request (nested and flat data) and answers the protocol's response, equal to a direct run", async () => {
    const a = [
      [0.5, -1, 2, 3.25],
      [4, 5, -6, 7],
    ];
    const r = await inferJson("/v2/models/multi/infer", {
      id: "req-7",
      inputs: [
        { name: "a", shape: [2, 4], datatype: "FP32", data: a },
        { name: "b", shape: [2, 1], datatype: "INT64", data: [10, -3] },
      ],
    });
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^application\/json/);
    expect(r.json).toMatchObject({ model_name: "multi", model_version: "1", id: "req-7" });
    const direct = await multiSession.run({
      a: new ort.Tensor("float32", Float32Array.from(a.flat()), [2, 4]),
      b: new ort.Tensor("int64", BigInt64Array.from([10n, -3n]), [2, 1]),
    });
    const outs = r.json.outputs as Output[];
    expect(outs.map((o) => [o.name, o.datatype, o.shape])).toEqual([["y", "FP32", [2, 4]]]);
    expectClose(outs[0]?.data as number[], direct.y?.data as Float32Array);
    // The job behind the answer is a Citadel job like any other.
    const jobId = (r.json.parameters as { job_id: string }).job_id;
    const job = await fleet.request("GET", `/v1/jobs/${jobId}`);
    expect([job.status, job.json.status, job.json.model]).toEqual([200, "completed", "multi"]);
  });

  it("answers a repeated infer with the same Idempotency-Key from the first job, run once", async () => {
    const body = { inputs: [{ name: "x", shape: [1, 3], datatype: "BOOL", data: [1, 0, 1] }] };
    const headers = { ...auth(), "idempotency-key": "v2-idem-1" };
    const first = await inferJson("/v2/models/flags/infer", body, headers);
    const again = await inferJson("/v2/models/flags/infer", body, headers);
    expect([first.status, again.status]).toEqual([200, 200]);
    expect(again.json.parameters).toEqual(first.json.parameters);
    expect(again.json.outputs).toEqual([{ name: "y", datatype: "BOOL", shape: [1, 3], data: [true, false, true] }]);
  });

  it("takes BOOL data as JSON booleans and answers booleans", async () => {
    const r = await inferJson("/v2/models/flags/versions/1/infer", {
      inputs: [{ name: "x", shape: [2, 3], datatype: "BOOL", data: [true, false, true, false, false, true] }],
    });
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.json.outputs).toEqual([
      { name: "y", datatype: "BOOL", shape: [2, 3], data: [true, false, true, false, false, true] },
    ]);
    expect(r.json.id).toBe((r.json.parameters as { job_id: string }).job_id);
  });

  it("runs a binary request and answers binary outputs (binary_data_output), equal to a direct run", async () => {
    const n = 2;
    const x = randomInput(n * OCR.dims[0] * OCR.dims[1] * OCR.dims[2], 5);
    const r = await inferBinary(
      `/v2/models/${OCR.name}/infer`,
      {
        id: "bin-1",
        parameters: { binary_data_output: true },
        inputs: [
          { name: "x", shape: [n, ...OCR.dims], datatype: "FP32", parameters: { binary_data_size: x.byteLength } },
        ],
      },
      [raw(x)],
    );
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.headers.get("content-type")).toBe("application/octet-stream");
    expect(r.json).toMatchObject({ model_name: OCR.name, model_version: "1.0.0", id: "bin-1" });
    const name = ocrSession.outputNames[0] as string;
    const direct = await ocrSession.run({ x: new ort.Tensor("float32", x, [n, ...OCR.dims]) });
    const out = (r.json.outputs as Output[]).find((o) => o.name === name);
    expect(out).toMatchObject({ datatype: "FP32", shape: [...(direct[name]?.dims ?? [])] });
    expect(out?.data).toBeUndefined();
    expectClose(f32(r.binary.get(name) ?? Buffer.alloc(0)), direct[name]?.data as Float32Array);
  });

  it("mixes binary and JSON inputs, and answers JSON unless an output asks for binary_data", async () => {
    const a = Float32Array.from([1, 2, 3, 4]);
    const header = (outputs?: unknown) => ({
      inputs: [
        { name: "a", shape: [1, 4], datatype: "FP32", parameters: { binary_data_size: 16 } },
        { name: "b", shape: [1, 1], datatype: "INT64", data: [[2]] },
      ],
      ...(outputs ? { outputs } : {}),
    });
    const json = await inferBinary("/v2/models/multi/infer", header(), [raw(a)]);
    expect(json.status, JSON.stringify(json.json)).toBe(200);
    expect(json.headers.get("content-type")).toMatch(/^application\/json/);
    expect(json.json.outputs).toEqual([{ name: "y", datatype: "FP32", shape: [1, 4], data: [3, 4, 5, 6] }]);
    const bin = await inferBinary(
      "/v2/models/multi/infer",
      header([{ name: "y", parameters: { binary_data: true } }]),
      [raw(a)],
    );
    expect(bin.status, JSON.stringify(bin.json)).toBe(200);
    expect(bin.json.outputs).toEqual([
      { name: "y", datatype: "FP32", shape: [1, 4], parameters: { binary_data_size: 16 } },
    ]);
    expect([...f32(bin.binary.get("y") ?? Buffer.alloc(0))]).toEqual([3, 4, 5, 6]);
  });
});

describe("requests as the standard clients send them", () => {
  const body = {
    inputs: [
      { name: "a", shape: [1, 4], datatype: "FP32", data: [1, 2, 3, 4] },
      { name: "b", shape: [1, 1], datatype: "INT64", data: [2] },
    ],
  };
  const post = (headers: Record<string, string>, payload: string | Buffer) =>
    fetch(`${fleet.apiUrl}/v2/models/multi/infer`, {
      method: "POST",
      headers: { ...auth(), ...headers },
      body: payload,
    });

  it("takes a JSON body with no Content-Type (tritonclient.http sets none), and answers plain application/json", async () => {
    // fetch labels a string body text/plain: a Buffer body goes without a Content-Type.
    const res = await post({}, Buffer.from(JSON.stringify(body)));
    const r = await read(res);
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.headers.get("content-type")).toBe("application/json");
  });

  it("takes a JSON body sent as application/octet-stream without Inference-Header-Content-Length (tritonclient.http.aio)", async () => {
    const r = await read(await post({ "content-type": "application/octet-stream" }, JSON.stringify(body)));
    expect(r.status, JSON.stringify(r.json)).toBe(200);
  });

  it("takes KServe's InferenceRESTClient body: model_name, a uuid id, and parameters it does not know", async () => {
    const id = "0c5bd0a5-3b24-4b4f-8a3e-2b1f7b8f3a11";
    const kserve = {
      id,
      model_name: "multi",
      parameters: { content_type: "np", priority: 1 },
      inputs: body.inputs.map((i) => ({ ...i, parameters: { content_type: "np" } })),
      outputs: [{ name: "y", parameters: { binary_data: false, classification: 0 } }],
    };
    const r = await inferJson("/v2/models/multi/infer", kserve);
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.json).toMatchObject({ model_name: "multi", id });
    // A model_name that contradicts the path is a client's mistake, not ignored.
    expectError(
      await inferJson("/v2/models/multi/infer", { ...kserve, model_name: "other" }),
      400,
      "VALIDATION_FAILED",
    );
  });

  // tritonclient's request_compression_algorithm: gzip (gzip.compress) or deflate
  // (zlib.compress, the zlib format HTTP's "deflate" names); Inference-Header-Content-Length
  // counts the inflated body, as Triton reads it.
  it("decodes a gzip JSON body (tritonclient's request_compression_algorithm='gzip')", async () => {
    const { gzipSync } = await import("node:zlib");
    const r = await read(
      await post({ "content-type": "application/json", "content-encoding": "gzip" }, gzipSync(JSON.stringify(body))),
    );
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.json.outputs).toEqual([{ name: "y", datatype: "FP32", shape: [1, 4], data: [3, 4, 5, 6] }]);
  });

  it("decodes a deflate binary body, its Inference-Header-Content-Length counting the inflated bytes", async () => {
    const { deflateSync } = await import("node:zlib");
    const head = Buffer.from(
      JSON.stringify({
        inputs: [
          { name: "a", shape: [1, 4], datatype: "FP32", parameters: { binary_data_size: 16 } },
          { name: "b", shape: [1, 1], datatype: "INT64", parameters: { binary_data_size: 8 } },
        ],
      }),
    );
    const plain = Buffer.concat([
      head,
      Buffer.from(new Float32Array([1, 2, 3, 4]).buffer),
      Buffer.from(new BigInt64Array([2n]).buffer),
    ]);
    const r = await read(
      await post(
        { "content-encoding": "deflate", "inference-header-content-length": String(head.length) },
        deflateSync(plain),
      ),
    );
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.json.outputs).toEqual([{ name: "y", datatype: "FP32", shape: [1, 4], data: [3, 4, 5, 6] }]);
  });

  it("refuses a body that inflates past the body limit (413) and one that does not inflate (400), queueing nothing", async () => {
    const { gzipSync } = await import("node:zlib");
    const before = await queueCounts(fleet, "multi");
    // 4 KB on the wire, 4 MiB inflated: the limit holds for the bytes decoded, not the bytes sent.
    const bomb = gzipSync(Buffer.alloc(4 * BODY_LIMIT, 0x20));
    expect(bomb.length).toBeLessThan(BODY_LIMIT / 64);
    expectError(
      await read(await post({ "content-type": "application/json", "content-encoding": "gzip" }, bomb)),
      413,
      "PAYLOAD_TOO_LARGE",
    );
    const broken = gzipSync(JSON.stringify(body)).subarray(0, 20);
    const r = await read(await post({ "content-type": "application/json", "content-encoding": "gzip" }, broken));
    expectError(r, 400, "BODY_ENCODING_INVALID");
    expect(r.json.error).toMatch(/gzip/);
    expect(await queueCounts(fleet, "multi")).toEqual(before);
  });

  it("refuses a coding it does not decode by name (415), instead of misreading it", async () => {
    const r = await read(
      await post({ "content-type": "application/json", "content-encoding": "br" }, JSON.stringify(body)),
    );
    expectError(r, 415, "UNSUPPORTED_MEDIA_TYPE");
    expect(r.json.error).toMatch(/'br'.*gzip, deflate/);
  });
});

describe("refusals, in the protocol's shape, with nothing queued", () => {
  const one = (input: Record<string, unknown>) => ({
    inputs: [
      { name: "a", shape: [1, 4], datatype: "FP32", data: [1, 2, 3, 4], ...input },
      { name: "b", shape: [1, 1], datatype: "INT64", data: [1] },
    ],
  });

  it("refuses bad input with 400 and Citadel's code in the message", async () => {
    const before = await queueCounts(fleet, "multi");
    const cases: [unknown, string][] = [
      [one({ datatype: "UINT32" }), "VALIDATION_FAILED"],
      [one({ datatype: "FP64" }), "TENSOR_DTYPE_MISMATCH"],
      [one({ shape: [1, 5], data: [1, 2, 3, 4, 5] }), "TENSOR_SHAPE_MISMATCH"],
      [one({ data: [1, 2, 3] }), "TENSOR_DATA_LENGTH_MISMATCH"],
      [
        one({
          data: [
            [1, 2],
            [3, 4],
          ],
        }),
        "TENSOR_SHAPE_MISMATCH",
      ],
      [one({ name: "c" }), "INPUT_UNKNOWN"],
      [{ inputs: [{ name: "a", shape: [1, 4], datatype: "FP32", data: [1, 2, 3, 4] }] }, "INPUT_MISSING"],
      [{ ...one({}), outputs: [{ name: "nope" }] }, "OUTPUT_UNKNOWN"],
      [{ ...one({}), colour: "red" }, "VALIDATION_FAILED"],
    ];
    for (const [body, code] of cases) expectError(await inferJson("/v2/models/multi/infer", body), 400, code);
    expectError(await inferJson("/v2/models/nope/infer", one({})), 404, "MODEL_NOT_FOUND");
    const res = await fetch(`${fleet.apiUrl}/v2/models/multi/infer`, {
      method: "POST",
      headers: { ...auth(), "content-type": "application/json" },
      body: '{"inputs": [',
    });
    expectError(await read(res), 400, "MALFORMED_JSON");
    expect((await queueCounts(fleet, "multi")).total).toBe(before.total);
  });

  it("refuses a binary body whose sizes do not add up (400)", async () => {
    const a = raw(Float32Array.from([1, 2, 3, 4]));
    const header = (size: number) => ({
      inputs: [
        { name: "a", shape: [1, 4], datatype: "FP32", parameters: { binary_data_size: size } },
        { name: "b", shape: [1, 1], datatype: "INT64", data: [1] },
      ],
    });
    expectError(await inferBinary("/v2/models/multi/infer", header(20), [a]), 400, "BINARY_DATA_SIZE_MISMATCH");
    expectError(await inferBinary("/v2/models/multi/infer", header(8), [a]), 400, "BINARY_DATA_SIZE_MISMATCH");
    const res = await fetch(`${fleet.apiUrl}/v2/models/multi/infer`, {
      method: "POST",
      headers: { ...auth(), "content-type": "application/octet-stream" },
      body: Buffer.concat([Buffer.from(JSON.stringify(header(16))), a]),
    });
    expectError(await read(res), 400, "BINARY_HEADER_LENGTH_INVALID");
  });

  it("refuses a body over the limit with 413", async () => {
    const big = Buffer.alloc(BODY_LIMIT + 1024, 0x20);
    const res = await fetch(`${fleet.apiUrl}/v2/models/multi/infer`, {
      method: "POST",
      headers: { ...auth(), "content-type": "application/json" },
      body: big,
    });
    expectError(await read(res), 413, "PAYLOAD_TOO_LARGE");
  });

  it("rate-limits with 429 and Retry-After", async () => {
    const key = await fleet.addTenant({ id: "v2-slow", models: ["*"], requestRate: 0.001, requestBurst: 1 });
    expect((await get("/v2", auth(key))).status).toBe(200);
    const limited = await get("/v2/models/multi", auth(key));
    expectError(limited, 429, "RATE_LIMITED");
    expect(Number(limited.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
  });

  it("audits a refused infer as a refused submit, with its model", async () => {
    const key = await fleet.addTenant({ id: "v2-audited", models: ["*"] });
    expectError(
      await inferJson("/v2/models/multi/infer", one({ datatype: "FP64" }), auth(key)),
      400,
      "TENSOR_DTYPE_MISMATCH",
    );
    const rec = await pollUntil("the refusal's audit record", async () =>
      (await readAudit(fleet)).find((a) => a.event === "job.rejected" && a.tenant === "v2-audited"),
    );
    expect(rec).toMatchObject({ model: "multi", errorCode: "TENSOR_DTYPE_MISMATCH", outcome: "rejected" });
  });

  it("answers an unknown /v2 route 404 in the protocol's shape", async () => {
    expectError(await get("/v2/models/multi/explain"), 404, "NOT_FOUND");
  });
});

describe("the OpenAPI document", () => {
  it("lists the /v2 routes, with both infer bodies", async () => {
    const doc = (await (await fetch(`${fleet.apiUrl}/openapi.json`)).json()) as {
      paths: Record<string, Record<string, { requestBody?: { content: Record<string, unknown> } }>>;
    };
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining([
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
      ]),
    );
    const body = doc.paths["/v2/models/{name}/infer"]?.post?.requestBody?.content ?? {};
    expect(Object.keys(body).sort()).toEqual(["application/json", "application/octet-stream"]);
    expect(JSON.stringify(inlineRefs(doc, body["application/json"]))).toContain("binary_data_output");
    expect(JSON.stringify(inlineRefs(doc, body["application/octet-stream"]))).toContain("binary_data_size");
    const infer = doc.paths["/v2/models/{name}/infer"]?.post as { responses?: Record<string, { content?: object }> };
    const answers = infer.responses ?? {};
    expect(Object.keys(answers["200"]?.content ?? {}).sort()).toEqual(["application/json", "application/octet-stream"]);
    expect(Object.keys(answers)).toEqual(expect.arrayContaining(["400", "401", "404", "413", "429", "503", "504"]));
  });
});

describe("a job not final in time", () => {
  it("answers 504 RESULT_PENDING naming the job, which GET /v1/jobs/{id} then answers", async () => {
    // No worker: the job stays queued, so the (zero) wait cannot see it finish.
    await Promise.all(fleet.workers.splice(0).map((w) => w.close()));
    const api = await startExtraApi(fleet, { MAX_WAIT_MS: "0" });
    try {
      const r = await inferBinary(
        "/v2/models/multi/infer",
        {
          inputs: [
            { name: "a", shape: [1, 4], datatype: "FP32", parameters: { binary_data_size: 16 } },
            { name: "b", shape: [1, 1], datatype: "INT64", parameters: { binary_data_size: 8 } },
          ],
        },
        [raw(Float32Array.from([1, 1, 1, 1])), raw(BigInt64Array.from([5n]))],
        api.url,
      );
      expectError(r, 504, "RESULT_PENDING");
      const id = /job '([^']+)'/.exec(r.json.error ?? "")?.[1] ?? "";
      expect(id).toMatch(/^multi\./);
      await fleet.startWorker();
      const done = await pollUntil(
        "the pending job to finish",
        async () => {
          const v = await fleet.request("GET", `/v1/jobs/${id}?wait=30000`);
          return v.json.status === "completed" ? v : undefined;
        },
        60_000,
      );
      expect(done.json.result.outputs.y.shape).toEqual([1, 4]);
    } finally {
      await api.close();
    }
  });
});
