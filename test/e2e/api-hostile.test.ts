import { request as httpRequest } from "node:http";
import { type ErrorCode, httpStatusFor } from "@citadel/contracts";
import { buildIdentityModel, buildMultiInputModel, buildNoBatchModel } from "@citadel/onnx";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Answer,
  errorEnvelope,
  inject,
  isErrorCode,
  jobsWhere,
  publishModel,
  queueCounts,
} from "../support/api-kit.js";
import { startTestFleet, type TestFleet } from "../support/fleet.js";

// docs/contract.md#hostile-input and issue 4 point 7: thousands of generated and mutated requests against a
// running API, under /v1 and /v2 (issue 12: the Open Inference Protocol's routes). Whatever arrives, the answer is a documented status with the error
// envelope, nothing 5xx, memory stays bounded and nothing refused reaches a queue.

const BODY_LIMIT = 256 * 1024;
const RUNS = 10_400;
const V2_RUNS = 2_400;
/** Requests per property run, sent concurrently (shrinking still works on the batch). */
const PARALLEL = 8;
const MODELS = ["h-tiny", "h-multi", "h-dyn", "h-int8", "h-fixed"] as const;
/** Every status docs/contract.md#statuses names. */
/** The API's answer for a path no route matches; see the note in checkAnswer. */
const DOCUMENTED = new Set([200, 202, 400, 401, 403, 404, 409, 413, 415, 422, 429, 503]);

let fleet: TestFleet;
let narrowKey = "";

beforeAll(async () => {
  // No workers: every accepted job stays in its queue, so the queues can be counted exactly.
  // MAX_WAIT_MS short: a /v2 infer waits that long for a job no worker runs, then answers 504.
  fleet = await startTestFleet({
    workers: 0,
    env: { BODY_LIMIT_BYTES: String(BODY_LIMIT), MAX_JSON_DEPTH: "16", MAX_WAIT_MS: "50" },
  });
  const range = { range: [-10, 10] as [number, number] };
  await publishModel(fleet, buildIdentityModel("float32", ["N", 4]), {
    name: "h-tiny",
    version: "1",
    spec: { maxBatch: 8, inputs: { x: range } },
  });
  await publishModel(fleet, buildMultiInputModel(), { name: "h-multi", version: "1", spec: { maxBatch: 4 } });
  await publishModel(fleet, buildIdentityModel("float32", ["N", "D"]), {
    name: "h-dyn",
    version: "1",
    spec: { maxBatch: 4, inputs: { x: { ...range, maxDim: 64 } } },
  });
  await publishModel(fleet, buildIdentityModel("int8", ["N", 3]), {
    name: "h-int8",
    version: "1",
    spec: { maxBatch: 8 },
  });
  await publishModel(fleet, buildNoBatchModel(), { name: "h-fixed", version: "1", spec: { batchAxis: null } });
  narrowKey = await fleet.addTenant({
    id: "narrow",
    models: ["h-tiny"],
    requestRate: 1_000_000,
    requestBurst: 1_000_000,
  });
});
afterAll(async () => {
  await fleet?.close();
});

// ---------- generators ----------

const hugeInts = [0, 1, 2, 3, 4, 8, 64, 65, -1, -4, 1 << 20, (1 << 20) + 1, 2 ** 31, 2 ** 32 + 1, 2 ** 53, 2 ** 53 + 2];
const dim = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 9 }) },
  { weight: 3, arbitrary: fc.constantFrom(...hugeInts) },
  { weight: 1, arbitrary: fc.constantFrom(1.5, -0, 1e308, -1e308, Number.MIN_VALUE) },
  { weight: 1, arbitrary: fc.constantFrom<unknown>("4", null, true, [], {}, "NaN") },
);
const shape = fc.oneof(
  { weight: 8, arbitrary: fc.array(dim, { maxLength: 5 }) },
  { weight: 1, arbitrary: fc.array(dim, { minLength: 8, maxLength: 12 }) },
  // Products far past 2^53 in few dimensions.
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      [1 << 20, 1 << 20, 1 << 20],
      [2 ** 31, 2 ** 31],
      [1, 1 << 20, 1 << 20, 1 << 20, 1 << 20],
    ),
  },
  { weight: 1, arbitrary: fc.constantFrom<unknown>("1,4", 4, null, { 0: 1 }) },
);
const dtype = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.constantFrom("float32", "int64", "int8", "float64", "uint8", "bool", "int32", "float16", "bfloat16"),
  },
  { weight: 1, arbitrary: fc.constantFrom<unknown>("float8", "FLOAT32", "string", "", 1, null) },
);
const b64Of = (bytes: number) => Buffer.alloc(Math.max(0, bytes), 0x3f).toString("base64");
const data = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0, max: 80 }).map(b64Of) }, // well-formed, often lying about length
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      "!!!!",
      "AAA",
      "AAAA====",
      "A===",
      "QUJD\n",
      "QU JD",
      "-_-_",
      "QUJD=QUJD",
      "ÿÿÿÿ",
      "\u0000\u0000\u0000\u0000",
    ),
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 3, arbitrary: fc.array(fc.double({ noNaN: false }), { maxLength: 40 }) },
  { weight: 2, arbitrary: fc.array(fc.integer({ min: -200, max: 200 }), { maxLength: 40 }) },
  {
    weight: 1,
    arbitrary: fc.array(fc.oneof(fc.boolean(), fc.constant(null), fc.string(), fc.constant([1])), { maxLength: 8 }),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom<unknown>(null, 4, {}, true, [
      [1, 2],
      [3, 4],
    ]),
  },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 40_000 }).map((n) => new Array<number>(n).fill(0.5)) },
);
const tensor = fc.record(
  { dtype, shape, data, extra: fc.constantFrom<unknown>(1, "x") },
  { requiredKeys: ["dtype", "shape", "data"] },
);
const inputName = fc.constantFrom("x", "a", "b", "y", "", "X", "x ");
const inputs = fc.oneof(
  { weight: 8, arbitrary: fc.dictionary(inputName, tensor, { maxKeys: 3 }) },
  { weight: 1, arbitrary: fc.constantFrom<unknown>(null, [], "x", 1) },
  {
    weight: 1,
    arbitrary: fc
      .integer({ min: 30, max: 40 })
      .map((n) =>
        Object.fromEntries(Array.from({ length: n }, (_, i) => [`i${i}`, { dtype: "float32", shape: [1], data: [1] }])),
      ),
  },
);
const modelName = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom<string>(...MODELS) },
  {
    weight: 1,
    arbitrary: fc.constantFrom<unknown>("nope", "", "H-TINY", "h-tiny.1", "../x", "a".repeat(300), 7, null, ["h-tiny"]),
  },
  { weight: 1, arbitrary: fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/) },
);
const jobBody = fc.record(
  {
    model: modelName,
    version: fc.constantFrom<unknown>("1", "2", "", 1, "latest"),
    inputs,
    outputs: fc.constantFrom<unknown>(
      ["y"],
      ["nope"],
      [],
      "y",
      [1],
      Array.from({ length: 40 }, () => "y"),
    ),
    timeoutMs: fc.constantFrom<unknown>(1, 1000, 5000, 5001, 0, -1, 1.5, "100", 2 ** 53, 1e308),
    priority: fc.constantFrom<unknown>("high", "normal", "low", "urgent", 1),
    colour: fc.constant("red"),
  },
  { requiredKeys: ["model", "inputs"] },
);

/** A request that fits its model exactly, so a share of the traffic is accepted. */
const validJob = fc
  .record({
    m: fc.constantFrom(...MODELS),
    rows: fc.integer({ min: 1, max: 4 }),
    v: fc.double({ min: -9, max: 9, noNaN: true }),
  })
  .map(({ m, rows, v }): Record<string, unknown> => {
    const f32 = (n: number) => Buffer.from(new Float32Array(n).fill(v).buffer).toString("base64");
    switch (m) {
      case "h-tiny":
        return { model: m, inputs: { x: { dtype: "float32", shape: [rows, 4], data: f32(rows * 4) } } };
      case "h-multi":
        return {
          model: m,
          inputs: {
            a: { dtype: "float32", shape: [rows, 4], data: Array.from({ length: rows * 4 }, () => v) },
            b: { dtype: "int64", shape: [rows, 1], data: Array.from({ length: rows }, () => 3) },
          },
        };
      case "h-dyn":
        return { model: m, inputs: { x: { dtype: "float32", shape: [rows, 7], data: f32(rows * 7) } } };
      case "h-int8":
        return {
          model: m,
          inputs: { x: { dtype: "int8", shape: [rows, 3], data: Array.from({ length: rows * 3 }, () => -7) } },
        };
      default:
        return { model: m, inputs: { x: { dtype: "float32", shape: [2, 3], data: [1, 2, 3, 4, 5, 6] } } };
    }
  });

/** A fitting request with one tensor field broken: reaches the tensor validation behind the schema. */
const nearValid = fc
  .record({
    job: validJob,
    field: fc.constantFrom("shape", "dtype", "data", "name", "drop", "version", "outputs", "timeoutMs"),
    shape,
    dtype: fc.constantFrom("float32", "int64", "int8", "float64", "uint8", "bool", "int32"),
    data,
    special: fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, -1e30, 11, 1e-45, 3.4e38),
    timeoutMs: fc.constantFrom(4999, 5000, 5001, 60_000),
  })
  .map(({ job, field, shape: sh, dtype: dt, data: d, special, timeoutMs }) => {
    const ins = job.inputs as Record<string, Record<string, unknown>>;
    const [name, t] = Object.entries(ins)[0] ?? ["x", {}];
    switch (field) {
      case "shape":
        return { ...job, inputs: { ...ins, [name]: { ...t, shape: sh } } };
      case "dtype":
        return { ...job, inputs: { ...ins, [name]: { ...t, dtype: dt } } };
      case "data":
        // Either arbitrary data, or the right length carrying one forbidden value (NaN/Inf/out of range).
        return Array.isArray(t.data) || typeof special !== "number"
          ? { ...job, inputs: { ...ins, [name]: { ...t, data: d } } }
          : {
              ...job,
              inputs: {
                ...ins,
                [name]: {
                  ...t,
                  data: (() => {
                    const raw = Buffer.from(String(t.data), "base64");
                    const f = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
                    if (f.length > 0) f[f.length - 1] = special;
                    return raw.toString("base64");
                  })(),
                },
              },
            };
      case "name":
        return { ...job, inputs: { ...ins, [`${name}2`]: t } };
      case "drop":
        return { ...job, inputs: {} };
      case "version":
        return { ...job, version: "2" };
      case "outputs":
        return { ...job, outputs: ["y", "nope"] };
      default:
        return { ...job, timeoutMs };
    }
  });

type Mutation =
  | { kind: "none" }
  | { kind: "truncate"; at: number }
  | { kind: "flip"; at: number; byte: number }
  | { kind: "badUtf8"; at: number; seq: readonly number[] }
  | { kind: "dupKey"; key: string }
  | { kind: "protoKey"; key: string }
  | { kind: "deep"; depth: number; open: string }
  | { kind: "bigNumber"; text: string }
  | { kind: "oversize"; bytes: number }
  | { kind: "trailing"; text: string };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 10, arbitrary: fc.constant<Mutation>({ kind: "none" }) },
  { weight: 2, arbitrary: fc.nat(400).map((at): Mutation => ({ kind: "truncate", at })) },
  {
    weight: 2,
    arbitrary: fc.record({ at: fc.nat(400), byte: fc.nat(255) }).map((r): Mutation => ({ kind: "flip", ...r })),
  },
  {
    weight: 2,
    arbitrary: fc
      .record({
        at: fc.nat(400),
        seq: fc.constantFrom(
          [0xff],
          [0xc3, 0x28],
          [0xc0, 0xaf],
          [0xed, 0xa0, 0x80],
          [0xf4, 0x90, 0x80, 0x80],
          [0xe2, 0x82],
          [0x80],
        ),
      })
      .map((r): Mutation => ({ kind: "badUtf8", ...r })),
  },
  {
    weight: 2,
    arbitrary: fc
      .constantFrom("model", "mod\\u0065l", "inputs", "priority")
      .map((key): Mutation => ({ kind: "dupKey", key })),
  },
  {
    weight: 2,
    arbitrary: fc
      .constantFrom("__proto__", "constructor", "prototype", "\\u005f_proto__")
      .map((key): Mutation => ({ kind: "protoKey", key })),
  },
  {
    weight: 2,
    arbitrary: fc
      .record({ depth: fc.constantFrom(15, 17, 100, 5000, 60_000), open: fc.constantFrom("[", '{"a":') })
      .map((r): Mutation => ({ kind: "deep", ...r })),
  },
  {
    weight: 1,
    arbitrary: fc
      .constantFrom("1e999", "-1e999", "1".repeat(400), "0.".concat("0".repeat(300), "1"))
      .map((text): Mutation => ({ kind: "bigNumber", text })),
  },
  {
    weight: 1,
    arbitrary: fc
      .constantFrom(BODY_LIMIT + 1, BODY_LIMIT * 2, 3 * 1024 * 1024)
      .map((bytes): Mutation => ({ kind: "oversize", bytes })),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom("x", "{}", "\u0000", " ", "]").map((text): Mutation => ({ kind: "trailing", text })),
  },
);

function mutate(json: string, m: Mutation): Buffer {
  const buf = Buffer.from(json, "utf8");
  switch (m.kind) {
    case "none":
      return buf;
    case "truncate":
      return buf.subarray(0, Math.min(m.at, Math.max(0, buf.length - 1)));
    case "flip": {
      const out = Buffer.from(buf);
      if (out.length > 0) out[m.at % out.length] = m.byte;
      return out;
    }
    case "badUtf8": {
      const at = buf.length > 0 ? m.at % buf.length : 0;
      return Buffer.concat([buf.subarray(0, at), Buffer.from(m.seq), buf.subarray(at)]);
    }
    case "dupKey":
      return Buffer.from(json.replace(/^\{/, `{"${m.key}":"h-tiny",`), "utf8");
    case "protoKey":
      return Buffer.from(json.replace(/^\{/, `{"${m.key}":{"polluted":true},`), "utf8");
    case "deep": {
      const close = m.open === "[" ? "]" : "}";
      return Buffer.from(json.replace(/^\{/, `{"nest":${m.open.repeat(m.depth)}1${close.repeat(m.depth)},`), "utf8");
    }
    case "bigNumber":
      return Buffer.from(json.replace(/^\{/, `{"timeoutMs":${m.text},`), "utf8");
    case "oversize":
      return Buffer.from(json.replace(/^\{/, `{"pad":"${"A".repeat(m.bytes)}",`), "utf8");
    case "trailing":
      return Buffer.concat([buf, Buffer.from(m.text, "utf8")]);
  }
}

type Auth = "acme" | "narrow" | "none" | "garbage" | "basic" | "long";
const auth = fc.oneof(
  { weight: 12, arbitrary: fc.constant<Auth>("acme") },
  { weight: 1, arbitrary: fc.constantFrom<Auth>("narrow", "none", "garbage", "basic", "long") },
);
function authHeader(a: Auth): Record<string, string> {
  switch (a) {
    case "acme":
      return { authorization: `Bearer ${fleet.apiKey}` };
    case "narrow":
      return { authorization: `Bearer ${narrowKey}` };
    case "none":
      return {};
    case "garbage":
      return { authorization: "Bearer ctd_\u00ff\u00fe not a key" };
    case "basic":
      return { authorization: `Basic ${Buffer.from("admin:admin-password-for-tests").toString("base64")}` };
    case "long":
      return { authorization: `Bearer ctd_${"k".repeat(5000)}` };
  }
}
const contentType = fc.oneof(
  { weight: 10, arbitrary: fc.constant<string | null>("application/json") },
  {
    weight: 2,
    arbitrary: fc.constantFrom<string | null>(
      null,
      "application/json; charset=utf-8",
      "application/json; charset=latin1",
      "APPLICATION/JSON",
      "text/plain",
      "text/json",
      "application/x-www-form-urlencoded",
      "multipart/form-data; boundary=x",
      "application/jsonx",
      "application/octet-stream",
      "",
    ),
  },
);
const idempotencyKey = fc.oneof(
  { weight: 12, arbitrary: fc.constant<string | null>(null) },
  { weight: 1, arbitrary: fc.constantFrom<string | null>("k1", "k2", "", "x".repeat(201), "\t") },
);
const jobId = fc.oneof(
  fc.constantFrom(
    "h-tiny.AAAAAAAAAAAAAAAAAAAAAAAA",
    "nope.AAAAAAAAAAAAAAAAAAAAAAAA",
    "h-tiny",
    ".",
    "%E0%A4%A",
    "%00",
    "%2e%2e%2f%2e%2e",
    "a".repeat(150),
    "h-tiny.".concat("A".repeat(190)),
    "%F0%28%8C%BC",
  ),
  fc.stringMatching(/^[A-Za-z0-9._~-]{1,40}$/),
);
const waitQuery = fc.constantFrom(
  "",
  "?wait=0",
  "?wait=-1",
  "?wait=abc",
  "?wait=1e3",
  "?wait=99999999",
  "?wait=1.5",
  "?wait=0x10",
  "?wait=1&wait=2",
  "?x=1",
  "?wait=%zz",
  "?wait=NaN",
);

type Req = {
  method: "GET" | "POST" | "DELETE";
  url: string;
  headers: Record<string, string>;
  payload?: Buffer;
  bulk?: boolean;
  /** A KServe v2 binary body (application/octet-stream). */
  binary?: boolean;
  /** Under /v2 (the Open Inference Protocol): its error envelope and status mapping. */
  v2?: boolean;
};

/** Counterexamples print as a short line, not as every byte of a 3 MB body. */
function described(r: Req): Req {
  return Object.assign(r, {
    [fc.toStringMethod]: () =>
      `${r.method} ${r.url} ${JSON.stringify(r.headers)} ${r.payload ? `${r.payload.length} B: ${JSON.stringify(r.payload.subarray(0, 160).toString("latin1"))}` : ""}`,
  });
}

const submit = fc
  .record({
    bulk: fc.boolean(),
    body: fc.oneof(
      { weight: 3, arbitrary: jobBody },
      { weight: 3, arbitrary: nearValid },
      { weight: 1, arbitrary: validJob },
    ),
    more: fc.array(fc.oneof(jobBody, nearValid, validJob), { maxLength: 6 }),
    bulkShape: fc.constantFrom("ok", "empty", "notArray", "extra", "huge"),
    mutation,
    auth,
    contentType,
    idempotencyKey,
  })
  .map((r): Req => {
    let doc: unknown = r.body;
    if (r.bulk) {
      const jobs = [r.body, ...r.more];
      doc =
        r.bulkShape === "empty"
          ? { jobs: [] }
          : r.bulkShape === "notArray"
            ? { jobs: r.body }
            : r.bulkShape === "extra"
              ? { jobs, more: 1 }
              : r.bulkShape === "huge"
                ? { jobs: new Array<unknown>(501).fill(1) }
                : { jobs };
    }
    const headers: Record<string, string> = { ...authHeader(r.auth) };
    if (r.contentType !== null) headers["content-type"] = r.contentType;
    if (r.idempotencyKey !== null) headers["idempotency-key"] = r.idempotencyKey;
    return described({
      method: "POST",
      url: r.bulk ? "/v1/jobs/bulk" : "/v1/jobs",
      headers,
      payload: mutate(JSON.stringify(doc), r.mutation),
      bulk: r.bulk,
    });
  });
const readOrCancel = fc.record({ del: fc.boolean(), id: jobId, q: waitQuery, auth }).map(
  (r): Req =>
    described({
      method: r.del ? "DELETE" : "GET",
      url: `/v1/jobs/${r.id}${r.del ? "" : r.q}`,
      headers: authHeader(r.auth),
    }),
);
const listing = fc
  .record({ q: fc.constantFrom("", "?a=1", "?__proto__=1"), auth })
  .map((r): Req => described({ method: "GET", url: `/v1/models${r.q}`, headers: authHeader(r.auth) }));
// ---------- binary bodies (KServe v2 binary tensor data extension) ----------

const DATATYPE: Record<string, string> = {
  float32: "FP32",
  float64: "FP64",
  int8: "INT8",
  uint8: "UINT8",
  int16: "INT16",
  uint16: "UINT16",
  int32: "INT32",
  int64: "INT64",
  bool: "BOOL",
};

/** A JSON tensor's data as the raw bytes a binary client would send (whatever the data is worth). */
function rawBytes(dtype: unknown, data: unknown): Buffer {
  if (typeof data === "string") return Buffer.from(data, "base64");
  if (!Array.isArray(data)) return Buffer.alloc(0);
  const nums = data.map((v) => (typeof v === "number" && Number.isFinite(v) ? v : 0));
  switch (dtype) {
    case "int64":
      return Buffer.from(
        BigInt64Array.from(nums, (v) => BigInt(Math.trunc(Math.max(-(2 ** 62), Math.min(2 ** 62, v))))).buffer,
      );
    case "int8":
      return Buffer.from(Int8Array.from(nums).buffer);
    case "uint8":
    case "bool":
      return Buffer.from(Uint8Array.from(nums).buffer);
    case "int32":
      return Buffer.from(Int32Array.from(nums).buffer);
    case "float64":
      return Buffer.from(Float64Array.from(nums).buffer);
    default:
      return Buffer.from(Float32Array.from(nums).buffer);
  }
}

/** A JSON job as a binary job: its header (KServe-style inputs) and its inputs' bytes in order. */
function asBinaryJob(job: unknown): { header: unknown; parts: Buffer[] } {
  if (typeof job !== "object" || job === null || Array.isArray(job)) return { header: job, parts: [] };
  const { inputs, outputs, ...rest } = job as Record<string, unknown>;
  const header: Record<string, unknown> = { ...rest };
  if (Array.isArray(outputs)) header.outputs = outputs.map((name) => ({ name }));
  else if (outputs !== undefined) header.outputs = outputs;
  if (typeof inputs !== "object" || inputs === null || Array.isArray(inputs)) {
    header.inputs = inputs;
    return { header, parts: [] };
  }
  const parts: Buffer[] = [];
  header.inputs = Object.entries(inputs as Record<string, Record<string, unknown>>).map(([name, t]) => {
    const bytes = rawBytes(t?.dtype, t?.data);
    parts.push(bytes);
    const dt = t?.dtype;
    return {
      name,
      datatype: typeof dt === "string" && DATATYPE[dt] ? DATATYPE[dt] : dt,
      shape: t?.shape,
      parameters: { binary_data_size: bytes.length },
    };
  });
  return { header, parts };
}

type Framing =
  | { kind: "none" }
  | { kind: "headerLength"; value: string | null }
  | { kind: "lengthDelta"; by: number }
  | { kind: "sizeDelta"; by: number }
  | { kind: "dropSize" }
  | { kind: "tail"; by: number }
  | { kind: "header"; m: Mutation };

const framing: fc.Arbitrary<Framing> = fc.oneof(
  { weight: 8, arbitrary: fc.constant<Framing>({ kind: "none" }) },
  {
    weight: 2,
    arbitrary: fc
      .constantFrom<string | null>(
        null,
        "",
        "-1",
        "abc",
        "1e2",
        "1.5",
        " 4",
        "0",
        "99999999999",
        "18446744073709551616",
      )
      .map((value): Framing => ({ kind: "headerLength", value })),
  },
  { weight: 2, arbitrary: fc.integer({ min: -8, max: 8 }).map((by): Framing => ({ kind: "lengthDelta", by })) },
  { weight: 2, arbitrary: fc.integer({ min: -9, max: 9 }).map((by): Framing => ({ kind: "sizeDelta", by })) },
  { weight: 1, arbitrary: fc.constant<Framing>({ kind: "dropSize" }) },
  { weight: 2, arbitrary: fc.integer({ min: -5, max: 5 }).map((by): Framing => ({ kind: "tail", by })) },
  { weight: 3, arbitrary: mutation.map((m): Framing => ({ kind: "header", m })) },
);

/** Breaks one thing about a binary body's framing (or nothing); the header is a JSON object. */
function frame(header: unknown, parts: Buffer[], f: Framing): { body: Buffer; headerLength: string | null } {
  const inputsOf = (h: unknown): { parameters?: Record<string, unknown> }[] => {
    const jobs = (h as { jobs?: unknown })?.jobs;
    const all = Array.isArray(jobs) ? jobs : [h];
    return all.flatMap((j) => {
      const ins = (j as { inputs?: unknown })?.inputs;
      return Array.isArray(ins) ? ins.filter((i) => typeof i === "object" && i !== null) : [];
    });
  };
  const h = structuredClone(header);
  const first = inputsOf(h)[0];
  if (f.kind === "sizeDelta" && first?.parameters) {
    first.parameters.binary_data_size = Number(first.parameters.binary_data_size) + f.by;
  }
  if (f.kind === "dropSize" && first) delete first.parameters;
  const json = JSON.stringify(h);
  const head = f.kind === "header" ? mutate(json, f.m) : Buffer.from(json, "utf8");
  let data = Buffer.concat(parts);
  if (f.kind === "tail")
    data = f.by >= 0 ? Buffer.concat([data, Buffer.alloc(f.by, 7)]) : data.subarray(0, data.length + f.by);
  const length = f.kind === "headerLength" ? f.value : String(head.length + (f.kind === "lengthDelta" ? f.by : 0));
  return { body: Buffer.concat([head, data]), headerLength: length };
}

const binaryContentType = fc.oneof(
  { weight: 10, arbitrary: fc.constant("application/octet-stream") },
  { weight: 1, arbitrary: fc.constantFrom("application/octet-stream; charset=utf-8", "APPLICATION/OCTET-STREAM") },
);

const binarySubmit = fc
  .record({
    bulk: fc.boolean(),
    body: fc.oneof(
      { weight: 2, arbitrary: jobBody },
      { weight: 3, arbitrary: nearValid },
      { weight: 3, arbitrary: validJob },
    ),
    more: fc.array(fc.oneof(nearValid, validJob), { maxLength: 5 }),
    framing,
    auth,
    contentType: binaryContentType,
    idempotencyKey,
  })
  .map((r): Req => {
    const jobs = (r.bulk ? [r.body, ...r.more] : [r.body]).map(asBinaryJob);
    const header = r.bulk ? { jobs: jobs.map((j) => j.header) } : jobs[0]?.header;
    const { body, headerLength } = frame(
      header,
      jobs.flatMap((j) => j.parts),
      r.framing,
    );
    const headers: Record<string, string> = { ...authHeader(r.auth), "content-type": r.contentType };
    if (headerLength !== null) headers["inference-header-content-length"] = headerLength;
    if (r.idempotencyKey !== null) headers["idempotency-key"] = r.idempotencyKey;
    return described({
      method: "POST",
      url: r.bulk ? "/v1/jobs/bulk" : "/v1/jobs",
      headers,
      payload: body,
      bulk: r.bulk,
      binary: true,
    });
  });

// ---------- the Open Inference Protocol (KServe v2) ----------

/** A JSON tensor's data as KServe JSON `data`: numbers stay as they are, base64 becomes its values. */
function v2Data(dtype: unknown, data: unknown): unknown {
  if (typeof data !== "string") return data;
  const bytes = Buffer.from(data, "base64");
  const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const whole = (size: number) => ab.slice(0, ab.byteLength - (ab.byteLength % size));
  if (dtype === "int8") return Array.from(new Int8Array(ab));
  if (dtype === "float64") return Array.from(new Float64Array(whole(8)));
  return Array.from(new Float32Array(whole(4)));
}

/** The model and version of a /v1 job as an infer URL (whatever they are worth). */
function v2Path(job: Record<string, unknown>, suffix: string): string {
  const model = encodeURIComponent(String(job.model));
  const version =
    typeof job.version === "string" && job.version !== "" ? `/versions/${encodeURIComponent(job.version)}` : "";
  return `/v2/models/${model}${version}${suffix}`;
}

const v2Parameters = fc.constantFrom<unknown>(
  undefined,
  { binary_data_output: true },
  { binary_data_output: "yes" },
  { priority: 1 },
  [],
);
const v2Id = fc.constantFrom<unknown>(undefined, "42", "", 42, "x".repeat(300), null);

const v2Infer = fc
  .record({
    job: fc.oneof(
      { weight: 2, arbitrary: jobBody },
      { weight: 3, arbitrary: nearValid },
      { weight: 3, arbitrary: validJob },
    ),
    binary: fc.boolean(),
    id: v2Id,
    parameters: v2Parameters,
    mutation,
    framing,
    auth,
    idempotencyKey,
  })
  .map((r): Req => {
    const job = r.job as Record<string, unknown>;
    const headers: Record<string, string> = { ...authHeader(r.auth) };
    // Keys of their own: a key the /v1 run used, with the same job, replays that job (the
    // fingerprint is the job's, whatever the route), which this run's count would not see queued.
    if (r.idempotencyKey !== null) headers["idempotency-key"] = r.idempotencyKey.replace(/^k/, "v2-k");
    const extra = {
      ...(r.id === undefined ? {} : { id: r.id }),
      ...(r.parameters === undefined ? {} : { parameters: r.parameters }),
    };
    if (r.binary) {
      const { header, parts } = asBinaryJob(job);
      const h = header as Record<string, unknown>;
      const { body, headerLength } = frame(
        { inputs: h.inputs, ...(h.outputs ? { outputs: h.outputs } : {}), ...extra },
        parts,
        r.framing,
      );
      headers["content-type"] = "application/octet-stream";
      if (headerLength !== null) headers["inference-header-content-length"] = headerLength;
      return described({ method: "POST", url: v2Path(job, "/infer"), headers, payload: body, binary: true, v2: true });
    }
    const ins = job.inputs;
    const inputs =
      typeof ins === "object" && ins !== null && !Array.isArray(ins)
        ? Object.entries(ins as Record<string, Record<string, unknown>>).map(([name, t]) => ({
            name,
            shape: t?.shape,
            datatype: typeof t?.dtype === "string" ? (DATATYPE[t.dtype] ?? t.dtype) : t?.dtype,
            data: v2Data(t?.dtype, t?.data),
          }))
        : ins;
    const outputs = Array.isArray(job.outputs) ? { outputs: job.outputs.map((name) => ({ name })) } : {};
    headers["content-type"] = "application/json";
    return described({
      method: "POST",
      url: v2Path(job, "/infer"),
      headers,
      payload: mutate(JSON.stringify({ inputs, ...outputs, ...extra }), r.mutation),
      v2: true,
    });
  });

const v2Read = fc
  .record({
    model: modelName,
    version: fc.constantFrom<unknown>(undefined, "1", "2", "%2e%2e", ""),
    suffix: fc.constantFrom("", "/ready"),
    auth,
  })
  .map(
    (r): Req =>
      described({
        method: "GET",
        url:
          r.model === "h-tiny" && r.version === undefined && r.suffix === ""
            ? "/v2"
            : v2Path({ model: r.model, version: r.version }, r.suffix),
        headers: authHeader(r.auth),
        v2: true,
      }),
  );

const anyRequest = fc.oneof(
  { weight: 14, arbitrary: submit },
  { weight: 6, arbitrary: binarySubmit },
  { weight: 3, arbitrary: readOrCancel },
  { weight: 1, arbitrary: listing },
);

/** Under /v2: infer (JSON and binary, mutated and misframed) and the metadata routes. */
const anyV2Request = fc.oneof({ weight: 6, arbitrary: v2Infer }, { weight: 1, arbitrary: v2Read });

// ---------- checks ----------

interface Tally {
  sent: number;
  byStatus: Map<number, number>;
  accepted: Set<string>;
  /** Jobs accepted from binary bodies, and the error codes binary bodies were answered with. */
  binaryAccepted: Set<string>;
  binaryCodes: Map<string, number>;
  /** The codes answers under /v2 carried. */
  v2Codes: Map<string, number>;
}

function checkAnswer(req: Req, a: Answer, tally: Tally): void {
  tally.sent++;
  const accept = (id: string) => {
    tally.accepted.add(id);
    if (req.binary) tally.binaryAccepted.add(id);
  };
  const noteCode = (code: string) => {
    if (req.binary) tally.binaryCodes.set(code, (tally.binaryCodes.get(code) ?? 0) + 1);
  };
  tally.byStatus.set(a.status, (tally.byStatus.get(a.status) ?? 0) + 1);
  const where = `${req.method} ${req.url} → ${a.status} ${a.text.slice(0, 300)}`;
  expect(a.status < 500, where).toBe(true);
  expect(DOCUMENTED.has(a.status), where).toBe(true);
  if (a.status === 200) {
    expect(req.method, where).toBe("GET");
    return;
  }
  if (a.status === 202) {
    expect(req.method === "POST" || req.method === "DELETE", where).toBe(true);
    if (req.method === "DELETE") return;
    const body = a.body as { id?: unknown; jobs?: unknown };
    if (req.bulk) {
      expect(Array.isArray(body.jobs), where).toBe(true);
      for (const item of body.jobs as unknown[]) {
        const e = errorEnvelope(item);
        if (e) {
          expect(isErrorCode(e.code), where).toBe(true);
          expect((item as { status?: unknown }).status, where).toBe(httpStatusFor(e.code as ErrorCode));
          noteCode(e.code);
        } else {
          const id = (item as { id?: unknown }).id;
          expect(typeof id, where).toBe("string");
          accept(id as string);
        }
      }
    } else {
      expect(typeof body.id, where).toBe("string");
      accept(body.id as string);
    }
    return;
  }
  const e = errorEnvelope(a.body);
  expect(e, where).not.toBeNull();
  expect(isErrorCode(e?.code ?? ""), where).toBe(true);
  expect(httpStatusFor(e?.code as ErrorCode), where).toBe(a.status);
  expect(e?.message.length, where).toBeGreaterThan(0);
  noteCode(e?.code ?? "");
  if (a.status === 429) expect(Number(a.headers["retry-after"]), where).toBeGreaterThanOrEqual(1);
}

/**
 * An answer under /v2, checked against the protocol's docs (docs/api.md, "Errors under
 * /v2"): `{"error":"<CODE>: <message>"}`, the code's status except that input the
 * manifest refuses (422 under /v1) is 400; an accepted infer with no worker to run it is
 * 504 RESULT_PENDING naming its job (counted as accepted).
 */
function checkV2Answer(req: Req, a: Answer, tally: Tally): void {
  tally.sent++;
  tally.byStatus.set(a.status, (tally.byStatus.get(a.status) ?? 0) + 1);
  const where = `${req.method} ${req.url} → ${a.status} ${a.text.slice(0, 300)}`;
  expect(DOCUMENTED.has(a.status) || a.status === 504, where).toBe(true);
  if (a.status === 200) {
    expect(req.method, where).toBe("GET");
    return;
  }
  const error = (a.body as { error?: unknown } | null)?.error;
  expect(typeof error, where).toBe("string");
  const m = /^([A-Z][A-Z0-9_]*): (.+)$/s.exec(error as string);
  expect(m, where).not.toBeNull();
  const code = m?.[1] ?? "";
  expect(isErrorCode(code), where).toBe(true);
  const v1 = httpStatusFor(code as ErrorCode);
  expect(a.status, where).toBe(v1 === 422 ? 400 : v1);
  tally.v2Codes.set(code, (tally.v2Codes.get(code) ?? 0) + 1);
  if (code === "RESULT_PENDING") {
    const id = /job '([^']+)'/.exec(m?.[2] ?? "")?.[1];
    expect(id, where).toBeDefined();
    tally.accepted.add(id as string);
  }
  if (a.status === 429) expect(Number(a.headers["retry-after"]), where).toBeGreaterThanOrEqual(1);
}

async function totalQueued(): Promise<{ total: number; waiting: number }> {
  let total = 0;
  let waiting = 0;
  for (const m of MODELS) {
    const c = await queueCounts(fleet, m);
    total += c.total;
    waiting += c.waiting + c.prioritized;
  }
  return { total, waiting };
}

/** Sends a request over a real socket, with the raw body bytes (no client-side re-encoding). */
function overHttp(req: Req, streamBytes?: number): Promise<Answer & { sentBytes: number }> {
  const url = new URL(fleet.apiUrl);
  return new Promise((resolve, reject) => {
    let sentBytes = 0;
    const r = httpRequest(
      { host: url.hostname, port: url.port, method: req.method, path: req.url, headers: req.headers },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let body: unknown = null;
          try {
            body = JSON.parse(text) as unknown;
          } catch {
            body = null;
          }
          resolve({ status: res.statusCode ?? 0, body, text, headers: res.headers, sentBytes });
        });
      },
    );
    r.on("error", reject);
    if (streamBytes === undefined) {
      r.end(req.payload);
      return;
    }
    // Stream a body far over the limit; stop once the server has answered.
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    let answered = false;
    r.once("response", () => {
      answered = true;
    });
    r.on("error", () => undefined);
    const pump = () => {
      while (!answered && sentBytes < streamBytes) {
        sentBytes += chunk.length;
        if (!r.write(chunk)) {
          r.once("drain", pump);
          return;
        }
      }
      if (!answered) r.end();
    };
    r.write("{");
    pump();
  });
}

/**
 * Sends `runs` generated requests, PARALLEL at a time, checking each answer into a
 * fresh tally; the first failing batch is shrunk and reported (HOSTILE_SEED replays it).
 */
async function sendGenerated(
  requests: fc.Arbitrary<Req>,
  runs: number,
  check: (req: Req, a: Answer, tally: Tally) => void,
): Promise<Tally> {
  const tally: Tally = {
    sent: 0,
    byStatus: new Map(),
    accepted: new Set(),
    binaryAccepted: new Set(),
    binaryCodes: new Map(),
    v2Codes: new Map(),
  };
  await fc.assert(
    fc.asyncProperty(fc.array(requests, { minLength: PARALLEL, maxLength: PARALLEL }), async (reqs) => {
      const answers = await Promise.all(reqs.map((req) => inject(fleet.api.app, req)));
      for (const [i, req] of reqs.entries()) check(req, answers[i] as Answer, tally);
    }),
    {
      numRuns: Math.ceil(runs / PARALLEL),
      seed: Number(process.env.HOSTILE_SEED ?? Date.now() % 2 ** 31),
      endOnFailure: true,
    },
  );
  return tally;
}

describe("hostile clients", () => {
  it(`answers ${RUNS} generated and mutated requests with documented 4xx codes and enqueues only what it accepts`, async () => {
    const before = await totalQueued();
    const rssBefore = process.memoryUsage().rss;
    const started = Date.now();
    const tally = await sendGenerated(anyRequest, RUNS, checkAnswer);
    // A sample over real sockets: the HTTP parser and the streaming body limit too.
    const sample = fc.sample(anyRequest, { numRuns: 300, seed: 7 });
    for (const req of sample) checkAnswer(req, await overHttp(req), tally);
    const elapsed = Date.now() - started;

    // The process is up and still serves.
    const health = await inject(fleet.api.app, { method: "GET", url: "/healthz" });
    expect(health.status).toBe(200);
    const rssAfter = process.memoryUsage().rss;
    const growthMb = (rssAfter - rssBefore) / 2 ** 20;
    // Nothing refused was queued: the queues grew by exactly the distinct accepted ids.
    const after = await totalQueued();
    expect(after.total - before.total).toBe(tally.accepted.size);
    expect(after.waiting - before.waiting).toBe(tally.accepted.size);
    const statuses = Object.fromEntries([...tally.byStatus].sort(([a], [b]) => a - b));
    process.stderr.write(
      `hostile: ${tally.sent} requests in ${elapsed} ms; statuses ${JSON.stringify(statuses)}; ` +
        `${tally.accepted.size} jobs accepted; rss ${(rssBefore / 2 ** 20).toFixed(0)} → ${(rssAfter / 2 ** 20).toFixed(0)} MB\n`,
    );
    expect(tally.sent).toBeGreaterThanOrEqual(10_000);
    // Made-up model names never become metric labels (the series would grow without bound).
    const metrics = await (await fetch(`${fleet.apiMetricsUrl}/metrics`)).text();
    const labels = [...metrics.matchAll(/^citadel_api_rejections_total\{[^}]*model="([^"]*)"/gm)].map((m) => m[1]);
    expect(labels.length).toBeGreaterThan(0);
    for (const l of new Set(labels)) expect(["", ...MODELS]).toContain(l);
    expect(growthMb).toBeLessThan(400);
    // The generators reach every layer: parser, schema, tensors, auth, and acceptance.
    for (const s of [202, 400, 401, 403, 404, 413, 415, 422])
      expect(tally.byStatus.get(s) ?? 0, `status ${s}`).toBeGreaterThan(0);
    expect(tally.accepted.size).toBeGreaterThan(50);
    // Binary bodies reach every layer too: framing faults, schema, tensors, and acceptance.
    for (const c of [
      "BINARY_HEADER_LENGTH_INVALID",
      "BINARY_DATA_SIZE_MISSING",
      "BINARY_DATA_SIZE_MISMATCH",
      "MALFORMED_JSON",
      "VALIDATION_FAILED",
      "TENSOR_DATA_LENGTH_MISMATCH",
    ])
      expect(tally.binaryCodes.get(c) ?? 0, `binary ${c}`).toBeGreaterThan(0);
    expect(tally.binaryAccepted.size).toBeGreaterThan(20);
  }, 180_000);

  it(`answers ${V2_RUNS} generated and mutated /v2 requests in the protocol's envelope and enqueues only what it accepts`, async () => {
    const before = await totalQueued();
    const startedAt = Date.now();
    const tally = await sendGenerated(anyV2Request, V2_RUNS, checkV2Answer);
    for (const req of fc.sample(anyV2Request, { numRuns: 100, seed: 11 }))
      checkV2Answer(req, await overHttp(req), tally);
    const after = await totalQueued();
    // Every job an answer named is in its queue; the queues grew by the ones this run added
    // (an answer may name an earlier job: an Idempotency-Key replay enqueues nothing).
    const where = await jobsWhere(fleet, tally.accepted);
    const missing = [...where].filter(([, w]) => w.state === "missing");
    expect(missing, "accepted jobs not in their queue").toEqual([]);
    const earlier = [...where].filter(([, w]) => w.addedAt < startedAt);
    if (earlier.length > 0)
      process.stderr.write(`hostile /v2: answers named earlier jobs ${JSON.stringify(earlier)}\n`);
    expect(after.total - before.total).toBe(tally.accepted.size - earlier.length);
    const statuses = Object.fromEntries([...tally.byStatus].sort(([a], [b]) => a - b));
    process.stderr.write(
      `hostile /v2: ${tally.sent} requests; statuses ${JSON.stringify(statuses)}; ${tally.accepted.size} jobs accepted\n`,
    );
    // Every layer is reached under /v2 too: routing, auth, framing, schema, tensors, acceptance.
    for (const st of [200, 400, 401, 404, 504]) expect(tally.byStatus.get(st) ?? 0, `status ${st}`).toBeGreaterThan(0);
    for (const c of ["BINARY_DATA_SIZE_MISMATCH", "MALFORMED_JSON", "VALIDATION_FAILED", "MODEL_NOT_FOUND"])
      expect(tally.v2Codes.get(c) ?? 0, `/v2 ${c}`).toBeGreaterThan(0);
    expect([...tally.v2Codes.keys()].some((c) => c.startsWith("TENSOR_"))).toBe(true);
    expect(tally.accepted.size).toBeGreaterThan(20);
    expect((await inject(fleet.api.app, { method: "GET", url: "/healthz" })).status).toBe(200);
  }, 180_000);

  it.each([
    ["JSON", { "content-type": "application/json" }],
    ["binary", { "content-type": "application/octet-stream", "inference-header-content-length": "1" }],
  ])("refuses a streamed oversized %s body with 413 before reading it whole", async (_label, type) => {
    const before = await totalQueued();
    const req: Req = {
      method: "POST",
      url: "/v1/jobs",
      headers: {
        authorization: `Bearer ${fleet.apiKey}`,
        ...type,
        "transfer-encoding": "chunked",
      },
    };
    const total = 512 * 1024 * 1024;
    const a = await overHttp(req, total);
    expect(a.status).toBe(413);
    expect(errorEnvelope(a.body)?.code).toBe("PAYLOAD_TOO_LARGE");
    // The answer came long before the 512 MiB were sent.
    expect(a.sentBytes).toBeLessThan(64 * 1024 * 1024);
    // A declared length over the limit is refused without waiting for the body.
    const declared = await overHttp({
      method: "POST",
      url: "/v1/jobs",
      headers: {
        authorization: `Bearer ${fleet.apiKey}`,
        ...type,
        "content-length": String(2 * 1024 ** 3),
      },
      payload: Buffer.from("{"),
    });
    expect([declared.status, errorEnvelope(declared.body)?.code]).toEqual([413, "PAYLOAD_TOO_LARGE"]);
    expect((await totalQueued()).total).toBe(before.total);
    expect((await inject(fleet.api.app, { method: "GET", url: "/healthz" })).status).toBe(200);
  });

  it("answers unknown routes and methods 404 with the error envelope (the protocol's under /v2)", async () => {
    for (const [method, url] of [
      ["PUT", "/v1/jobs"],
      ["PATCH", "/v1/jobs/x"],
      ["GET", "/v3/jobs"],
      ["POST", "/v1/models"],
    ] as const) {
      const a = await inject(fleet.api.app, { method, url, headers: { authorization: `Bearer ${fleet.apiKey}` } });
      expect(a.status).toBe(404);
      expect(errorEnvelope(a.body)).not.toBeNull();
    }
    // Under /v2 (the Open Inference Protocol) the envelope is the protocol's: one string, the code first.
    for (const [method, url] of [
      ["GET", "/v2/jobs"],
      ["PUT", "/v2/models/x/infer"],
    ] as const) {
      const a = await inject(fleet.api.app, { method, url, headers: { authorization: `Bearer ${fleet.apiKey}` } });
      expect(a.status).toBe(404);
      expect(a.body).toEqual({ error: expect.stringMatching(/^NOT_FOUND: /) });
    }
  });
});
