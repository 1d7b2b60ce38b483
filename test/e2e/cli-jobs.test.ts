import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { cliArgs, freePort } from "@citadel/cli/fleet";
import { buildConvNet, buildFailingModel, buildMultiInputModel } from "@citadel/onnx";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ChildResult, runChild } from "../support/child.js";
import { decodeF32, type Loose, startTestFleet, type TestFleet } from "../support/fleet.js";
import { writeNpy as writeNpyFile } from "../support/npy.js";
import { tempDir } from "../support/temp-dirs.js";

// Issue 12 point 5: the CLI for people, as a child process against a running fleet —
// jobs get/wait/cancel, submit from .npy files and from a JSONL file, and one-line errors.

let fleet: TestFleet;
let dir: string;

/** Runs the CLI (asynchronously: the fleet it talks to lives in this process). */
function citadel(args: string[], env: Record<string, string> = {}): Promise<ChildResult> {
  return runChild([process.execPath, ...cliArgs(), ...args], {
    cwd: dir,
    env: { PATH: process.env.PATH ?? "", CITADEL_API_URL: fleet.apiUrl, CITADEL_API_KEY: fleet.apiKey, ...env },
  });
}

/** A .npy file in the test's folder. */
function writeNpy(file: string, descr: string, shape: number[], data: ArrayBufferView): void {
  writeNpyFile(path.join(dir, file), descr, shape, data);
}

function random(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (s / 2147483648) * 2 - 1;
  });
}

beforeAll(async () => {
  dir = tempDir("cli-jobs");
  fleet = await startTestFleet({ workers: 1 });
  await fleet.publish(buildMultiInputModel(), { name: "multi", version: "1", spec: { maxBatch: 8 } });
  await fleet.publish(buildConvNet(), { name: "conv", version: "1", spec: { maxBatch: 4 } });
  await fleet.publish(buildFailingModel(), { name: "fails", version: "1", spec: { maxBatch: 4 } });
});
afterAll(async () => {
  await fleet?.close();
});

describe("citadel submit with .npy inputs", () => {
  it("sends the files as a binary body; the outputs equal a direct onnxruntime run", async () => {
    const a = Float32Array.from([1, 2.5, -3, 4, 0.5, 0, 7, -8]);
    const b = BigInt64Array.from([2n, -1n]);
    writeNpy("a.npy", "<f4", [2, 4], a);
    writeNpy("b.npy", "<i8", [2, 1], b);
    const r = await citadel([
      "submit",
      "--model",
      "multi",
      "--input",
      "a=a.npy",
      "--input",
      "b=b.npy",
      "--wait",
      "60000",
    ]);
    expect(r.code, r.err).toBe(0);
    const view = JSON.parse(r.out) as Loose;
    expect(view).toMatchObject({ status: "completed", model: "multi", version: "1" });
    const session = await ort.InferenceSession.create(buildMultiInputModel());
    const direct = await session.run({
      a: new ort.Tensor("float32", a, [2, 4]),
      b: new ort.Tensor("int64", b, [2, 1]),
    });
    expect(view.result.outputs.y.shape).toEqual([2, 4]);
    expect(Array.from(decodeF32(view.result.outputs.y.data))).toEqual(Array.from(direct.y?.data as Float32Array));

    const x = random(2 * 3 * 32 * 32, 7);
    writeNpy("x.npy", "<f4", [2, 3, 32, 32], x);
    const conv = await citadel(["submit", "--model", "conv", "--input", "x=x.npy", "--wait", "60000"]);
    expect(conv.code, conv.err).toBe(0);
    const convView = JSON.parse(conv.out) as Loose;
    const convSession = await ort.InferenceSession.create(buildConvNet());
    const convDirect = await convSession.run({ x: new ort.Tensor("float32", x, [2, 3, 32, 32]) });
    const got = decodeF32(convView.result.outputs.probs.data);
    const want = convDirect.probs?.data as Float32Array;
    expect(got.length).toBe(want.length);
    for (let i = 0; i < want.length; i++) expect(got[i]).toBeCloseTo(want[i] ?? Number.NaN, 5);
  });

  it("without --wait prints the accepted job; a file the reader refuses is one line naming it", async () => {
    writeNpy("one.npy", "<f4", [1, 4], Float32Array.from([1, 2, 3, 4]));
    writeNpy("one-b.npy", "<i8", [1, 1], BigInt64Array.from([1n]));
    const r = await citadel(["submit", "--model", "multi", "--input", "a=one.npy", "--input", "b=one-b.npy"]);
    expect(r.code, r.err).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ status: "queued", model: "multi", version: "1" });

    writeNpy("big-endian.npy", ">f4", [1, 4], new Float32Array(4));
    const bad = await citadel(["submit", "--model", "multi", "--input", "a=big-endian.npy"]);
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/^citadel: TENSOR_ENCODING_INVALID: big-endian\.npy: dtype '>f4' is not supported/);
    expect(bad.err.trim().split("\n")).toHaveLength(1);
  });

  it("the API's refusal is CODE: message (HTTP status); a schema error names its path", async () => {
    writeNpy("short.npy", "<f4", [1, 3], new Float32Array(3));
    const refused = await citadel(["submit", "--model", "multi", "--input", "a=short.npy", "--input", "b=one-b.npy"]);
    expect(refused.code).toBe(1);
    expect(refused.err.trim()).toMatch(/^citadel: TENSOR_SHAPE_MISMATCH: .* \(HTTP 422\)$/);

    const badName = await citadel(["submit", "--model", "Multi_Model", "--input", "a=one.npy"]);
    expect([badName.code, badName.err.trim()]).toEqual([
      1,
      "citadel: VALIDATION_FAILED: model: lowercase letters, digits and '-', at most 63",
    ]);
    writeFileSync(
      path.join(dir, "request.json"),
      JSON.stringify({ model: "multi", inputs: { a: { dtype: "float32", shape: "1x4", data: [1, 2, 3, 4] } } }),
    );
    const badShape = await citadel(["enqueue", "request.json"]);
    expect([badShape.code, badShape.err.trim()]).toEqual([
      1,
      "citadel: VALIDATION_FAILED: inputs.a.shape: expected array, received string",
    ]);
  });
});

describe("citadel jobs", () => {
  it("get, wait and cancel a job that stays queued (no worker), with their exit codes", async () => {
    await Promise.all(fleet.workers.splice(0).map((w) => w.close()));
    try {
      const sub = await citadel(["submit", "--model", "multi", "--input", "a=one.npy", "--input", "b=one-b.npy"]);
      expect(sub.code, sub.err).toBe(0);
      const { id } = JSON.parse(sub.out) as { id: string };

      const get = await citadel(["jobs", "get", id]);
      expect([get.code, JSON.parse(get.out).status, get.err.trim()]).toEqual([
        4,
        "queued",
        `citadel: job ${id} is queued, not final yet`,
      ]);
      // No worker is running: the job cannot finish within the timeout, however slow the machine.
      const wait = await citadel(["jobs", "wait", id, "--timeout", "300"]);
      expect([wait.code, wait.err.trim()]).toEqual([4, `citadel: job ${id} is still queued after 300 ms`]);

      const cancel = await citadel(["jobs", "cancel", id]);
      expect([cancel.code, JSON.parse(cancel.out)]).toEqual([0, { id, status: "cancelled" }]);
      const after = await citadel(["jobs", "wait", id]);
      expect([after.code, JSON.parse(after.out).status, after.err.trim()]).toEqual([
        3,
        "cancelled",
        `citadel: job ${id} was cancelled`,
      ]);
    } finally {
      await fleet.startWorker();
    }
  });

  it("wait exits 0 on a completed job and 2 on a failed one; an unknown id is JOB_NOT_FOUND", async () => {
    const ok = await citadel(["submit", "--model", "multi", "--input", "a=one.npy", "--input", "b=one-b.npy"]);
    const { id } = JSON.parse(ok.out) as { id: string };
    const done = await citadel(["jobs", "wait", id, "--timeout", "60000"]);
    expect([done.code, done.err]).toEqual([0, ""]);
    expect(Array.from(decodeF32((JSON.parse(done.out) as Loose).result.outputs.y.data))).toEqual([2, 3, 4, 5]);
    expect((await citadel(["jobs", "get", id])).code).toBe(0);
    // Cancelling a finished job changes nothing and says so.
    const late = await citadel(["jobs", "cancel", id]);
    expect([late.code, late.err.trim()]).toEqual([1, `citadel: job ${id} is already completed; nothing to cancel`]);

    writeNpy("two.npy", "<f4", [1, 2], Float32Array.from([1, 2]));
    const failing = await citadel(["submit", "--model", "fails", "--input", "x=two.npy"]);
    const failedId = (JSON.parse(failing.out) as { id: string }).id;
    const failed = await citadel(["jobs", "wait", failedId, "--timeout", "60000"]);
    expect(failed.code, failed.out).toBe(2);
    expect(JSON.parse(failed.out).status).toBe("failed");
    expect(failed.err.trim()).toMatch(new RegExp(`^citadel: job ${failedId.replace(".", "\\.")} failed: [A-Z_]+: `));

    const missing = await citadel(["jobs", "get", "multi.doesnotexist"]);
    expect(missing.code).toBe(1);
    expect(missing.err.trim()).toMatch(/^citadel: JOB_NOT_FOUND: .* \(HTTP 404\)$/);
  });

  it("an address that does not answer is named in one line; a missing key is asked for; the demo's state is read", async () => {
    const port = await freePort();
    const r = await citadel(["jobs", "get", "x.y", "--api", `http://127.0.0.1:${port}`]);
    expect([r.code, r.err]).toEqual([
      1,
      `citadel: cannot reach the API at http://127.0.0.1:${port}: connection refused\n`,
    ]);
    const noKey = await citadel(["jobs", "get", "x.y"], { CITADEL_API_KEY: "" });
    expect([noKey.code, noKey.err]).toEqual([1, "citadel: no API key: pass --key <key> or set CITADEL_API_KEY\n"]);
    // With neither, a running demo's .citadel/demo.json in the working directory is used.
    mkdirSync(path.join(dir, ".citadel"));
    writeFileSync(
      path.join(dir, ".citadel", "demo.json"),
      JSON.stringify({ apiUrl: fleet.apiUrl, apiKey: fleet.apiKey }),
    );
    try {
      const demo = await citadel(["jobs", "get", "multi.doesnotexist"], { CITADEL_API_URL: "", CITADEL_API_KEY: "" });
      expect([demo.code, demo.err.trim()]).toEqual([1, "citadel: JOB_NOT_FOUND: no such job (HTTP 404)"]);
    } finally {
      rmSync(path.join(dir, ".citadel"), { recursive: true });
    }
  });
});

describe("citadel submit --jsonl", () => {
  it("answers every line in the results file, a malformed one with its line number and code", async () => {
    const job = (a: number[], b: number, extra: Record<string, unknown> = {}) =>
      JSON.stringify({
        ...extra,
        model: "multi",
        inputs: {
          a: { dtype: "float32", shape: [1, 4], data: a },
          b: { dtype: "int64", shape: [1, 1], data: [b] },
        },
      });
    const lines = [
      job([1, 2, 3, 4], 1, { custom_id: "first" }),
      '{"model": "multi", "inputs": ',
      JSON.stringify({ custom_id: 7, model: "multi", inputs: { a: { dtype: "float32", shape: "1x4", data: [] } } }),
      "",
      JSON.stringify({ model: "nope", inputs: {} }),
      JSON.stringify({
        custom_id: "doomed",
        model: "fails",
        inputs: { x: { dtype: "float32", shape: [1, 2], data: [1, 2] } },
      }),
      ...Array.from({ length: 6 }, (_, i) => job([i, i, i, i], 10 * i)),
    ];
    writeFileSync(path.join(dir, "jobs.jsonl"), `${lines.join("\n")}\n`);
    const r = await citadel(["submit", "--jsonl", "jobs.jsonl", "--out", "results.jsonl", "--concurrency", "3"]);
    expect(r.code, r.err).toBe(2);
    expect(r.out).toBe("");
    expect(r.err).toMatch(
      /citadel: 11 lines: 7 completed, 1 not completed, 3 rejected \(results in results\.jsonl\)\n$/,
    );
    const results = readFileSync(path.join(dir, "results.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Loose);
    const byLine = new Map(results.map((x) => [x.line as number, x]));
    // One result per non-blank line (line 4 is blank), each once.
    expect([...byLine.keys()].sort((p, q) => p - q)).toEqual([1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12]);
    expect(results).toHaveLength(11);

    expect(byLine.get(1)).toMatchObject({ custom_id: "first", status: "completed" });
    expect(Array.from(decodeF32(byLine.get(1).result.outputs.y.data))).toEqual([2, 3, 4, 5]);
    expect(byLine.get(2)).toMatchObject({ status: "rejected", error: { code: "MALFORMED_JSON" } });
    expect(byLine.get(2).error.message).toMatch(/^line 2: /);
    expect(byLine.get(2).id).toBeUndefined();
    expect(byLine.get(3)).toMatchObject({
      custom_id: 7,
      status: "rejected",
      error: { code: "VALIDATION_FAILED", message: "line 3: inputs.a.shape: expected array, received string" },
    });
    expect(byLine.get(5)).toMatchObject({ status: "rejected", error: { code: "MODEL_NOT_FOUND", httpStatus: 404 } });
    expect(byLine.get(6)).toMatchObject({ custom_id: "doomed", status: "failed" });
    expect(byLine.get(6).id).toMatch(/^fails\./);
    for (let i = 0; i < 6; i++) {
      const x = byLine.get(7 + i);
      expect(x.status, JSON.stringify(x)).toBe("completed");
      expect(x.id).toMatch(/^multi\./);
      expect(Array.from(decodeF32(x.result.outputs.y.data))).toEqual([i, i, i, i].map((v) => v + 10 * i));
    }
  });

  it("writes the results to stdout without --out and exits 0 when every job completed", async () => {
    writeFileSync(
      path.join(dir, "ok.jsonl"),
      `${JSON.stringify({ custom_id: "only", model: "multi", inputs: { a: { dtype: "float32", shape: [1, 4], data: [0, 0, 0, 0] }, b: { dtype: "int64", shape: [1, 1], data: [3] } } })}\n`,
    );
    const r = await citadel(["submit", "--jsonl", "ok.jsonl"]);
    expect(r.code, r.err).toBe(0);
    const [only, ...rest] = r.out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Loose);
    expect(rest).toEqual([]);
    expect(only).toMatchObject({ line: 1, custom_id: "only", status: "completed" });
  });
});
