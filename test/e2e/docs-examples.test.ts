import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { OCR_CLS_PATH } from "@citadel/cli/sample-models";
import { CitadelClient } from "@citadel/client";
import { buildIdentityModel, buildMultiInputModel } from "@citadel/onnx";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pollUntil, publishModel } from "../support/api-kit.js";
import { type ChildResult, runChild, runCli } from "../support/child.js";
import { startTestFleet, type TestFleet } from "../support/fleet.js";
import { writeNpy } from "../support/npy.js";

// Issue 12 point 7: docs/api.md's curl, TypeScript and Python examples run as written
// against a fleet. Each block's `# {…}` comment lines are what it prints ("…" stands for
// anything; a leading status is the HTTP status of the answer that prints it), and every
// runnable block of the page must be claimed by one case below, so a new example without
// a run fails here.

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const DOC = path.join(ROOT, "docs", "api.md");
/** Where the examples' own `http://localhost:8080` points. */
const DOC_ORIGINS = ["http://localhost:8080", "http://127.0.0.1:8080"];
/** Served by no worker: a batch of it stays queued until cancelled. */
const PARKED = "parked";
const python = spawnSync("python3", ["--version"], { encoding: "utf8" }).status === 0;
if (!python) console.warn("docs-examples: python3 is not on PATH; the Python example is not run");

interface Block {
  lang: string;
  text: string;
  /** 1-based line of the opening fence. */
  line: number;
}

function blocks(markdown: string): Block[] {
  const out: Block[] = [];
  const lines = markdown.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\w*)\s*$/.exec(lines[i] ?? "");
    if (!open) continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !/^```\s*$/.test(lines[i] ?? ""); i++) body.push(lines[i] ?? "");
    out.push({ lang: open[1] ?? "", text: body.join("\n"), line: start + 1 });
  }
  return out;
}

const ALL = blocks(readFileSync(DOC, "utf8"));
const RUNNABLE = ALL.filter((b) => ["sh", "ts", "python"].includes(b.lang));
const claimed = new Set<Block>();

/** The one runnable block that contains every one of `marks`; claimed so none is run twice or left out. */
function block(lang: string, ...marks: string[]): Block {
  const found = RUNNABLE.filter((b) => b.lang === lang && marks.every((m) => b.text.includes(m)));
  if (found.length !== 1) {
    throw new Error(`docs/api.md: ${found.length} ${lang} blocks contain ${JSON.stringify(marks)} (expected one)`);
  }
  const b = found[0] as Block;
  claimed.add(b);
  return b;
}

/** The JSON blocks that are whole documents (not sketches with "…"), by a mark they contain. */
function jsonBlock(mark: string): unknown {
  const found = ALL.filter((b) => b.lang === "json" && b.text.includes(mark));
  if (found.length !== 1) throw new Error(`docs/api.md: ${found.length} json blocks contain ${mark}`);
  return JSON.parse((found[0] as Block).text);
}

interface Expectation {
  status?: number;
  pattern: RegExp;
  text: string;
}

/**
 * A block's printed answers: comment lines `# {…}` or `# 202 {…}`, continued by
 * comment lines indented further. Prose comments (`# One OCR sample …`) are not answers.
 */
function expectations(b: Block): Expectation[] {
  const out: { status?: number; text: string }[] = [];
  for (const raw of b.text.split("\n")) {
    const m = /^#( +)(.*)$/.exec(raw);
    if (!m) continue;
    const [, indent = "", rest = ""] = m;
    const start = /^(?:(\d{3}) )?(\{.*)$/.exec(rest);
    if (indent.length === 1 && start) {
      out.push({ ...(start[1] ? { status: Number(start[1]) } : {}), text: start[2] ?? "" });
    } else if (indent.length > 1 && out.length > 0) {
      const last = out[out.length - 1] as { text: string };
      last.text += rest;
    }
  }
  return out.map((e) => ({
    ...e,
    pattern: new RegExp(`^${e.text.split("…").map(escapeRegExp).join(".*?")}$`),
  }));
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

interface Answer {
  status: number;
  lines: string[];
}

/** stdout of a block whose curl calls each end with `@@status <code>`, cut into answers. */
function answers(stdout: string): Answer[] {
  const out: Answer[] = [];
  let lines: string[] = [];
  for (const line of stdout.split("\n")) {
    const m = /^@@status (\d{3})$/.exec(line);
    if (m) {
      out.push({ status: Number(m[1]), lines });
      lines = [];
    } else if (line !== "") lines.push(line);
  }
  return out;
}

/** Every answer the block documents was printed, with its status when one is given. */
function expectPrinted(b: Block, stdout: string): void {
  const got = answers(stdout);
  const want = expectations(b);
  for (const e of want) {
    const hit = got.some(
      (a) => (e.status === undefined || a.status === e.status) && a.lines.some((l) => e.pattern.test(l)),
    );
    if (!hit) {
      throw new Error(
        `docs/api.md:${b.line}: no answer matches ${e.status ?? ""} ${e.text}\nanswers:\n${got
          .map((a) => `${a.status} ${a.lines.join("\n    ").slice(0, 2000)}`)
          .join("\n")}`,
      );
    }
  }
}

let fleet: TestFleet;
let work: string;
let ocrX: Float32Array;
let ocrY: Float32Array;
let ocrOutput: string;
let tinyJob: string;
let batchId: string;
let parkedBatchId: string;
let receiver: Receiver;
/** A tenant that may name a callback per job, and its webhook secret. */
let routerKey: string;
let routerSecret: string;
let delivery: { headers: Record<string, string>; raw: string };
const webhookEnv = () => ({ CITADEL_WEBHOOK_SECRET: routerSecret });

/** Runs a program in the examples' folder; resolves with its exit code and output. */
function run(argv: string[], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<ChildResult> {
  return runChild(argv, {
    cwd: work,
    env: {
      PATH: process.env.PATH ?? "",
      HOME: process.env.HOME ?? work,
      KEY: fleet.apiKey,
      API: fleet.apiUrl,
      CITADEL_API_KEY: fleet.apiKey,
      ...env,
    },
    timeout: timeoutMs,
  });
}

/** The block's text with the docs' address, and any other placeholders given, made real. */
function realise(b: Block, replace: Record<string, string> = {}): string {
  let text = b.text;
  for (const origin of DOC_ORIGINS) text = text.split(origin).join(fleet.apiUrl);
  for (const [from, to] of Object.entries(replace)) text = text.split(from).join(to);
  return text;
}

/**
 * A shell block as written, under bash; each curl call also prints `@@status <code>`
 * after its body (a function in front of curl adds `-w`; nothing in the block changes).
 */
async function runShell(b: Block, replace: Record<string, string> = {}, env: Record<string, string> = {}) {
  const script = [
    "set -u",
    `curl() { command curl --max-time 60 -w '\\n@@status %{http_code}\\n' "$@"; }`,
    realise(b, replace),
  ].join("\n");
  const r = await run(["bash", "-c", script], env);
  if (r.code !== 0) throw new Error(`docs/api.md:${b.line} exited ${String(r.code)}:\n${r.out}\n${r.err}`);
  return r;
}

/** An answer written by curl -o / -D: the JSON header and the bytes after it. */
function binaryAnswer(): { header: Record<string, unknown>; bytes: Buffer } {
  const headers = readFileSync(path.join(work, "headers.txt"), "utf8");
  const n = Number(/inference-header-content-length: *(\d+)/i.exec(headers)?.[1]);
  expect(headers).toMatch(/content-type: *application\/octet-stream/i);
  const body = readFileSync(path.join(work, "answer.bin"));
  return {
    header: JSON.parse(body.subarray(0, n).toString("utf8")) as Record<string, unknown>,
    bytes: body.subarray(n),
  };
}

/**
 * What a TypeScript or Python block prints: each `console.log(…)` or `print(…)` line's
 * trailing comment, in order, one printed line each ("…" elides).
 */
function expectLogged(b: Block, stdout: string): void {
  const want = b.text
    .split("\n")
    .filter((l) => /\b(console\.log|print)\(/.test(l))
    .map((l) => /(?:\/\/|#) (.*)$/.exec(l)?.[1])
    .filter((c): c is string => c !== undefined);
  expect(want.length, `docs/api.md:${b.line} shows what it prints`).toBeGreaterThan(0);
  const got = stdout.split("\n");
  let at = 0;
  for (const w of want) {
    const pattern = new RegExp(`^${w.split("…").map(escapeRegExp).join(".*?")}$`);
    const i = got.findIndex((l, j) => j >= at && pattern.test(l));
    if (i < 0) throw new Error(`docs/api.md:${b.line}: nothing printed matches ${w}\nprinted:\n${stdout}`);
    at = i + 1;
  }
}

/** Node's arguments that run a TypeScript file as the page's reader would (tsx), with the workspace's sources. */
const tsx = (file: string) => [
  process.execPath,
  "--conditions=@citadel/source",
  "--import",
  import.meta.resolve("tsx"),
  file,
];

/** A webhook target: keeps what it is sent, answers 200. */
class Receiver {
  private readonly got: { headers: Record<string, string>; raw: string }[] = [];
  private readonly server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === "string") headers[k] = v;
      this.got.push({ headers, raw: Buffer.concat(chunks).toString("utf8") });
      res.writeHead(200).end("ok");
    });
  });
  url = "";

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/citadel`;
  }

  next(): Promise<{ headers: Record<string, string>; raw: string }> {
    return pollUntil("a webhook delivery", async () => this.got.shift(), 60_000, 50);
  }

  close(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }
}

function expectOcrOutput(bytes: Buffer): void {
  const got = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  expect(got.length).toBe(ocrY.length);
  for (const [i, v] of got.entries()) expect(v).toBeCloseTo(ocrY[i] as number, 5);
}

function random(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (s / 2147483648) * 2 - 1;
  });
}

beforeAll(async () => {
  receiver = new Receiver();
  await receiver.start();
  fleet = await startTestFleet({
    workers: 1,
    env: { WEBHOOK_ALLOW_HOSTS: "127.0.0.1" },
    workerEnv: { WORKER_MODELS: "tiny,multi,ocr-cls" },
  });
  const rates = { requestRate: 10_000, requestBurst: 10_000, sampleRate: 100_000, sampleBurst: 100_000 };
  routerKey = await fleet.addTenant({ id: "router", models: ["*"], ...rates, allowRequestCallbacks: true });
  const secret = await runCli(["tenants", "webhook-secret", "router"], {
    env: { PATH: process.env.PATH ?? "", ...fleet.env },
  });
  expect(secret.code, secret.err).toBe(0);
  routerSecret = secret.out.trim();
  const ocrBytes = new Uint8Array(readFileSync(OCR_CLS_PATH));
  await publishModel(fleet, ocrBytes, {
    name: "ocr-cls",
    version: "1.0.0",
    spec: { maxBatch: 8, inputs: { x: { range: [-1, 1], maxDim: 1024 } } },
  });
  await publishModel(fleet, buildIdentityModel("float32", ["N", 4]), {
    name: "tiny",
    version: "1",
    spec: { maxBatch: 8 },
  });
  await publishModel(fleet, buildMultiInputModel(), { name: "multi", version: "1", spec: { maxBatch: 8 } });
  await publishModel(fleet, buildIdentityModel("float32", ["N", 4]), {
    name: PARKED,
    version: "1",
    spec: { maxBatch: 8 },
  });

  // The examples' folder sits in the repository (npm finds the root's `citadel` script from
  // there), under .citadel/ which git ignores; @citadel/client resolves through a link.
  mkdirSync(path.join(ROOT, ".citadel"), { recursive: true });
  work = mkdtempSync(path.join(ROOT, ".citadel", "docs-examples-"));
  // (In a folder of its own: npm would take a folder with node_modules for the project's root.)
  mkdirSync(path.join(work, "ts", "node_modules", "@citadel"), { recursive: true });
  symlinkSync(path.join(ROOT, "packages", "client"), path.join(work, "ts", "node_modules", "@citadel", "client"));

  // x.f32: one OCR sample, and what onnxruntime alone makes of it.
  ocrX = random(3 * 48 * 192, 11);
  writeFileSync(path.join(work, "x.f32"), Buffer.from(ocrX.buffer));
  const session = await ort.InferenceSession.create(ocrBytes);
  ocrOutput = session.outputNames[0] as string;
  ocrY = (await session.run({ x: new ort.Tensor("float32", ocrX, [1, 3, 48, 192]) }))[ocrOutput]?.data as Float32Array;

  // requests.jsonl: the page's batch line first, 50 lines, line 7 not JSON, line 20 without its input.
  const docLine = jsonBlock('"custom_id": "req-1"') as { body: unknown };
  const lines = Array.from({ length: 50 }, (_, i) => {
    const n = i + 1;
    if (n === 1) return JSON.stringify(docLine);
    if (n === 7) return `{"custom_id":"req-7","body":{"model":"tiny"`;
    const inputs = n === 20 ? {} : { x: { dtype: "float32", shape: [1, 4], data: [n, n, n, n] } };
    return JSON.stringify({ custom_id: `req-${n}`, body: { model: "tiny", inputs } });
  });
  writeFileSync(path.join(work, "requests.jsonl"), `${lines.join("\n")}\n`);

  // For the CLI: a.npy and b.npy for `multi`, and the page's JSONL line as jobs.jsonl.
  writeNpy(path.join(work, "a.npy"), "<f4", [1, 4], Float32Array.from([1, 2, 3, 4]));
  writeNpy(path.join(work, "b.npy"), "<i8", [1, 1], BigInt64Array.from([2n]));
  writeFileSync(path.join(work, "jobs.jsonl"), `${JSON.stringify(jsonBlock('"custom_id": "doc-17"'))}\n`);
}, 180_000);

afterAll(async () => {
  await fleet?.close();
  await receiver?.close();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("docs/api.md examples, run as written", () => {
  it("JSON body: a job is queued", async () => {
    const b = block("sh", "/v1/jobs -H", "[0.5,1,1.5,2]");
    expectPrinted(b, (await runShell(b)).out);
  });

  it("binary body: one OCR sample with ?wait, answered as bytes equal to onnxruntime's", async () => {
    const b = block("sh", "/v1/jobs?wait=5000", "octet-stream");
    await runShell(b);
    const { header, bytes } = binaryAnswer();
    expect(header).toMatchObject({
      status: "completed",
      model: "ocr-cls",
      result: { outputs: [{ name: ocrOutput, datatype: "FP32", shape: [1, 2] }] },
    });
    expectOcrOutput(bytes);
  });

  it("the binary header shown for POST /v1/jobs is accepted as it stands", async () => {
    const header = JSON.stringify(jsonBlock('"binary_data_output": true'));
    const res = await fetch(`${fleet.apiUrl}/v1/jobs?wait=20000`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${fleet.apiKey}`,
        "content-type": "application/octet-stream",
        "inference-header-content-length": String(Buffer.byteLength(header)),
      },
      body: Buffer.concat([Buffer.from(header), Buffer.from(ocrX.buffer)]),
    });
    const body = Buffer.from(await res.arrayBuffer());
    expect(res.status, body.toString()).toBe(200);
    const n = Number(res.headers.get("inference-header-content-length"));
    expect(JSON.parse(body.subarray(0, n).toString())).toMatchObject({ status: "completed", version: "1.0.0" });
    expectOcrOutput(body.subarray(n));
  });

  it("submit and wait: 200 with the result", async () => {
    const b = block("sh", "/v1/jobs?wait=5000", "application/json");
    const r = await runShell(b);
    expectPrinted(b, r.out);
    tinyJob = (JSON.parse(answers(r.out)[0]?.lines[0] ?? "{}") as { id: string }).id;
  });

  it("batches: create, status, results by custom_id", async () => {
    const create = block("sh", "/v1/batches -H");
    const r = await runShell(create);
    expectPrinted(create, r.out);
    batchId = (JSON.parse(answers(r.out)[0]?.lines[0] ?? "{}") as { id: string }).id;
    expect(batchId).toMatch(/^batch_/);

    const status = block("sh", "curl -s http://localhost:8080/v1/batches/batch_… -H");
    const s = await runShell(status, { "batch_…": batchId });
    expect(JSON.parse(answers(s.out)[0]?.lines[0] ?? "{}")).toMatchObject({ id: batchId, object: "batch" });

    // The page shows results once the batch is over.
    const done = await new CitadelClient({ baseUrl: fleet.apiUrl, apiKey: fleet.apiKey }).waitForBatch(batchId, {
      timeoutMs: 120_000,
      pollMs: 200,
    });
    expect(done.status).toBe("completed");
    const results = block("sh", "/results -H");
    expectPrinted(results, (await runShell(results, { "batch_…": batchId })).out);
  });

  it("batches: cancel one whose jobs are all queued", async () => {
    const lines = Array.from({ length: 12 }, (_, i) =>
      JSON.stringify({
        custom_id: `p-${i}`,
        body: { model: PARKED, inputs: { x: { dtype: "float32", shape: [1, 4], data: [i, i, i, i] } } },
      }),
    );
    const res = await fetch(`${fleet.apiUrl}/v1/batches`, {
      method: "POST",
      headers: { authorization: `Bearer ${fleet.apiKey}`, "content-type": "application/jsonl" },
      body: `${lines.join("\n")}\n`,
    });
    expect(res.status).toBe(202);
    parkedBatchId = ((await res.json()) as { id: string }).id;
    const b = block("sh", "-X DELETE");
    expectPrinted(b, (await runShell(b, { "batch_…": parkedBatchId })).out);
  });

  it("KServe v2: model metadata, JSON infer, binary infer, an error", async () => {
    const meta = block("sh", "/v2/models/multi -H");
    expectPrinted(meta, (await runShell(meta)).out);

    const infer = block("sh", '"id":"42"');
    expectPrinted(infer, (await runShell(infer)).out);

    const binary = block("sh", "/v2/models/ocr-cls/infer");
    await runShell(binary);
    const { header, bytes } = binaryAnswer();
    expect(header).toMatchObject({ model_name: "ocr-cls", outputs: [{ name: ocrOutput, datatype: "FP32" }] });
    expectOcrOutput(bytes);

    const error = block("sh", '"shape":[1,5]');
    expectPrinted(error, (await runShell(error)).out);
  });

  it("Server-Sent Events: the job's final status", async () => {
    const b = block("sh", "/events");
    const r = await runShell(b, { $ID: tinyJob });
    expect(r.out).toMatch(/^event: completed$/m);
    expect(r.out).toContain(`"id":"${tinyJob}"`);
  });

  it("bulk: each item answered on its own", async () => {
    const b = block("sh", "/v1/jobs/bulk");
    expectPrinted(b, (await runShell(b)).out);
  });

  it("a per-job callback: accepted, then delivered signed to the target it names", async () => {
    const b = block("sh", '"callback"');
    expectPrinted(
      b,
      (await runShell(b, { "https://hooks.example.com/citadel": receiver.url }, { KEY: routerKey })).out,
    );
    delivery = await receiver.next();
  });

  it("TypeScript: submit and wait, bulk, a batch and its results; KServe v2 with fetch", async () => {
    for (const [name, b] of [
      ["client", block("ts", "submitAndWait")],
      ["v2", block("ts", "/v2/models/multi/infer")],
    ] as const) {
      writeFileSync(path.join(work, "ts", `${name}.ts`), realise(b));
      const r = await run(tsx(path.join("ts", `${name}.ts`)));
      expect(r.code, r.err).toBe(0);
      expectLogged(b, r.out);
    }
  });

  it("TypeScript: the webhook receiver accepts the delivery and refuses it edited", async () => {
    const b = block("ts", "verifyWebhook");
    writeFileSync(path.join(work, "ts", "receiver.ts"), realise(b));
    writeFileSync(
      path.join(work, "ts", "drive.ts"),
      [
        'import { receive } from "./receiver.ts";',
        "const d = JSON.parse(process.env.DELIVERY ?? '') as { headers: Record<string, string>; raw: string };",
        "await receive(d.headers, d.raw);",
        'await receive(d.headers, d.raw.replace("order-7", "order-8")).catch((e: Error) => console.log("refused:", e.name));',
      ].join("\n"),
    );
    const r = await run(tsx(path.join("ts", "drive.ts")), { ...webhookEnv(), DELIVERY: JSON.stringify(delivery) });
    expect(r.code, r.err).toBe(0);
    expectLogged(b, r.out);
    expect(r.out).toContain("refused: WebhookVerificationError");
  });

  it.runIf(python)("Python: submit and wait, bulk, a batch, KServe v2; the webhook receiver", async () => {
    const prelude = `import os, sys\nsys.path.insert(0, ${JSON.stringify(path.join(ROOT, "clients", "python"))})\nKEY = os.environ["KEY"]\n`;
    const b = block("python", "submit_and_wait");
    writeFileSync(path.join(work, "client.py"), `${prelude}${realise(b)}\n`);
    const r = await run(["python3", "client.py"]);
    expect(r.code, r.err).toBe(0);
    expectLogged(b, r.out);

    const rb = block("python", "verify_webhook");
    const drive = [
      "import json",
      "d = json.loads(os.environ['DELIVERY'])",
      "receive(d['headers'], d['raw'].encode())",
      "try:",
      "    receive(d['headers'], d['raw'].replace('order-7', 'order-8').encode())",
      "except Exception as e:",
      "    print('refused:', type(e).__name__)",
    ].join("\n");
    writeFileSync(path.join(work, "receiver.py"), `${prelude}${realise(rb)}\n${drive}\n`);
    const w = await run(["python3", "receiver.py"], { ...webhookEnv(), DELIVERY: JSON.stringify(delivery) });
    expect(w.code, w.err).toBe(0);
    expectLogged(rb, w.out);
    expect(w.out).toContain("refused: WebhookVerificationError");
  });

  it("the CLI: submit from .npy files, jobs get / wait / cancel, submit --jsonl", async () => {
    const b = block("sh", "npm run -s citadel");
    // Each command's exit status is printed after it (the page's trailing comments dropped).
    const script = realise(b, { "CITADEL_API_KEY=…": "CITADEL_API_KEY=$KEY" })
      .split("\n")
      .map((l) => (l.startsWith("npm ") ? `${l.replace(/\s+#.*$/, "")}; echo "@@exit $?"` : l))
      .join("\n");
    let id = "";
    const lines = script.split("\n");
    const submit = lines.findIndex((l) => l.includes("submit --model"));
    const first = await run(["bash", "-c", `set -u\n${lines.slice(0, submit + 1).join("\n")}`], {}, 180_000);
    expect(first.out, first.err).toMatch(/@@exit 0$/m);
    const view = JSON.parse(first.out.slice(0, first.out.indexOf("@@exit"))) as { id: string; status: string };
    expect(view.status).toBe("completed");
    id = view.id;
    const rest = lines
      .slice(submit + 1)
      .join("\n")
      .split("multi.3fQ…")
      .join(id);
    const r = await run(
      ["bash", "-c", `set -u\n${lines.filter((l) => l.startsWith("export")).join("\n")}\n${rest}`],
      {},
      180_000,
    );
    // get, wait: completed (0); cancel of a finished job: 1; submit --jsonl with every line completed: 0.
    expect(
      [...r.out.matchAll(/^@@exit (\d+)$/gm)].map((m) => Number(m[1])),
      r.err,
    ).toEqual([0, 0, 1, 0]);
    expect(r.err).toContain("already");
    const results = readFileSync(path.join(work, "results.jsonl"), "utf8").trim().split("\n");
    expect(results.map((l) => JSON.parse(l) as unknown)).toMatchObject([{ custom_id: "doc-17", status: "completed" }]);
  }, 240_000);

  it("every runnable example of docs/api.md was run above", () => {
    if (!python) for (const mark of ["submit_and_wait", "verify_webhook"]) block("python", mark); // skipped above, said so
    const left = RUNNABLE.filter((b) => !claimed.has(b)).map((b) => `docs/api.md:${b.line} (${b.lang})`);
    expect(left).toEqual([]);
  });
});
