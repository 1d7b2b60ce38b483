import { thrownCode } from "@citadel/contracts";
import { describe, expect, it } from "vitest";
import { decodeBinarySubmit, wantsBinary } from "./binary-body.js";

const opts = { bulk: false, maxJsonDepth: 16, bulkMaxJobs: 4 };

function body(header: unknown, ...parts: number[][]): { len: string; buf: Buffer } {
  const head = Buffer.from(JSON.stringify(header));
  return { len: String(head.length), buf: Buffer.concat([head, ...parts.map((p) => Buffer.from(p))]) };
}
const input = (name: string, size: number, datatype = "UINT8") => ({
  name,
  datatype,
  shape: [1, size],
  parameters: { binary_data_size: size },
});
const code = thrownCode;

describe("decodeBinarySubmit", () => {
  it("turns a header and its bytes into a job request with raw-byte inputs, in header order", () => {
    const b = body(
      {
        model: "m",
        version: "2",
        timeoutMs: 100,
        inputs: [input("a", 2), input("b", 1, "INT8")],
        outputs: [{ name: "y" }],
        parameters: { binary_data_output: true },
      },
      [1, 2],
      [255],
    );
    const r = decodeBinarySubmit(b.len, b.buf, opts);
    expect(r.binaryOutput).toBe(true);
    const job = r.jobs[0];
    expect(job).toMatchObject({ model: "m", version: "2", timeoutMs: 100, priority: "normal", outputs: ["y"] });
    expect(Object.keys(job?.inputs ?? {})).toEqual(["a", "b"]);
    const a = job?.inputs.a as { dtype: string; shape: number[]; bytes: Uint8Array };
    const bIn = job?.inputs.b as { dtype: string; bytes: Uint8Array };
    expect([a.dtype, a.shape, [...a.bytes]]).toEqual(["uint8", [1, 2], [1, 2]]);
    expect([bIn.dtype, [...bIn.bytes]]).toEqual(["int8", [255]]);
    // Views of the body, not copies.
    expect(a.bytes.buffer).toBe(b.buf.buffer);
  });

  it("cuts a bulk's bytes job by job", () => {
    const b = body(
      {
        jobs: [
          { model: "m", inputs: [input("a", 1)] },
          { model: "n", inputs: [input("a", 2)] },
        ],
      },
      [9, 8, 7],
    );
    const r = decodeBinarySubmit(b.len, b.buf, { ...opts, bulk: true });
    expect(r.binaryOutput).toBe(false);
    expect(r.jobs.map((j) => [j.model, [...(j.inputs.a as { bytes: Uint8Array }).bytes]])).toEqual([
      ["m", [9]],
      ["n", [8, 7]],
    ]);
  });

  it.each([
    ["an input named twice", { model: "m", inputs: [input("a", 1), input("a", 1)] }, [[1], [2]], "VALIDATION_FAILED"],
    [
      "an input without a size",
      { model: "m", inputs: [{ name: "a", datatype: "UINT8", shape: [1] }] },
      [[1]],
      "BINARY_DATA_SIZE_MISSING",
    ],
    ["sizes short of the bytes", { model: "m", inputs: [input("a", 1)] }, [[1, 2]], "BINARY_DATA_SIZE_MISMATCH"],
    ["an unknown field", { model: "m", inputs: [], extra: 1 }, [], "VALIDATION_FAILED"],
  ])("refuses %s", (_label, header, parts, want) => {
    const b = body(header, ...(parts as number[][]));
    expect(code(() => decodeBinarySubmit(b.len, b.buf, opts))).toBe(want);
  });

  it("refuses a bulk over the job bound before reading its jobs", () => {
    const b = body({ jobs: Array.from({ length: 5 }, () => ({ model: "m", inputs: [] })) });
    expect(code(() => decodeBinarySubmit(b.len, b.buf, { ...opts, bulk: true }))).toBe("VALIDATION_FAILED");
  });
});

describe("wantsBinary", () => {
  it.each([
    [undefined, false, false],
    [undefined, true, true],
    ["application/json", true, true],
    ["application/octet-stream", false, true],
    ["application/json", false, false],
    ["*/*", false, false],
    ["application/json, application/octet-stream", false, false],
    ["application/octet-stream, application/json", false, true],
    ["application/json;q=0.5, application/octet-stream", false, true],
    ["application/octet-stream;q=0", false, false],
    ["text/html", false, false],
  ])("Accept %s with binary_data_output %s → %s", (accept, flag, want) => {
    expect(wantsBinary(accept, flag)).toBe(want);
  });
});
