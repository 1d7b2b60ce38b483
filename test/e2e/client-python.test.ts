import { spawn, spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { OCR_CLS_PATH } from "@citadel/cli/sample-models";
import { buildFailingModel, buildIdentityModel, buildMultiInputModel } from "@citadel/onnx";
import { toBfloat16Bits } from "@citadel/tensors";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { publishModel } from "../support/api-kit.js";
import { startTestFleet, type TestFleet } from "../support/fleet.js";

// Issue 12 point 4: the Python client (clients/python/citadel_client.py, standard library
// only) against a running fleet. Its unittest suite runs twice, with numpy and with numpy
// made unimportable; reference outputs come from direct onnxruntime runs here.

const CLIENT_DIR = fileURLToPath(new URL("../../clients/python/", import.meta.url));
const WAIT_MS = 60_000;
/** Served by no worker (WORKER_MODELS leaves it out): its jobs stay queued until cancelled. */
const PARKED = "parked";

const probe = (args: string[]) => spawnSync("python3", args, { encoding: "utf8" });
const pythonVersion = probe(["--version"]);
const python = pythonVersion.status === 0 ? pythonVersion.stdout.trim() : undefined;
const numpy = python !== undefined && probe(["-c", "import numpy"]).status === 0;
if (!python) console.warn("client-python: python3 is not on PATH; the Python client's tests are skipped");
else if (!numpy) console.warn(`client-python: ${python} has no numpy; only the run without numpy happens`);

/** Runs the suite with numpy made unimportable: a meta-path finder refuses `numpy` and its submodules. */
const HIDE_NUMPY = `
import sys
class HideNumpy:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden for this run)", name=name)
        return None
sys.meta_path.insert(0, HideNumpy())
sys.argv = ["unittest", "-v", "test_citadel_client"]
import unittest
unittest.main(module=None)
`;

let fleet: TestFleet;
let fixturesPath: string;

function random(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (s / 2147483648) * 2 - 1;
  });
}

const floats = (t: ort.Tensor | undefined) => Array.from(t?.data as Float32Array);

/** Reference outputs from onnxruntime run directly (not through Citadel), for the Python tests to compare with. */
async function references(ocrBytes: Uint8Array): Promise<Record<string, unknown>> {
  const ocr = await ort.InferenceSession.create(ocrBytes);
  const ocrShape = [2, 3, 48, 192];
  const x = random(2 * 3 * 48 * 192, 7);
  const ocrOut = (await ocr.run({ x: new ort.Tensor("float32", x, ocrShape) }))[ocr.outputNames[0] as string];

  const multi = await ort.InferenceSession.create(buildMultiInputModel());
  const cases = Array.from({ length: 12 }, (_, i) => ({ a: [i, i + 0.5, -i, i / 4], b: i % 5 }));
  const multiOut = await multi.run({
    a: new ort.Tensor("float32", Float32Array.from(cases.flatMap((c) => c.a)), [cases.length, 4]),
    b: new ort.Tensor("int64", BigInt64Array.from(cases.map((c) => BigInt(c.b))), [cases.length, 1]),
  });
  const y = floats(multiOut.y);

  // float16: the patterns of test/e2e/half-precision.test.ts (normal, subnormal, ±0, extremes).
  const fp16Bits = [0x3c00, 0xc000, 0x7bff, 0xfbff, 0x0001, 0x03ff, 0x8000, 0x0000, 0x0400, 0x2e66, 0x3c01, 0x8001];
  const fp16 = await ort.InferenceSession.create(buildIdentityModel("float16", ["N", 4]));
  const fp16Data = Uint16Array.from(fp16Bits);
  const fp16In = new ort.Tensor("float16", fp16Data, [3, 4]);
  // Node 24: onnxruntime-common rewraps the bits as a Float16Array the 1.30 binding reads as 0 bytes.
  if (!(fp16In.data instanceof Uint16Array)) Object.defineProperty(fp16In, "data", { value: fp16Data });
  const fp16Out = (await fp16.run({ x: fp16In })).y?.data as ArrayBufferView;

  // bfloat16 into a float32 model: the API rounds each value to its nearest bfloat16 (ties
  // to even) and the worker widens it exactly; the reference runs those widened values.
  const bf16Values = [1, -2.5, 3.015625, 100.25, 0.1, -1e-3, 1 + 3 * 2 ** -8, 250];
  const bf16Bits = bf16Values.map(toBfloat16Bits);
  const widened = new Float32Array(new Uint32Array(bf16Bits.map((b) => b << 16)).buffer);
  const f32 = await ort.InferenceSession.create(buildIdentityModel("float32", ["N", 4]));
  const bf16Out = (await f32.run({ x: new ort.Tensor("float32", widened, [2, 4]) })).y;

  return {
    wait_ms: WAIT_MS,
    parked: PARKED,
    ocr: {
      model: "ocr-cls",
      shape: ocrShape,
      x: Buffer.from(x.buffer).toString("base64"),
      output: ocr.outputNames[0],
      y_shape: [...(ocrOut?.dims ?? [])],
      y: floats(ocrOut),
    },
    multi: cases.map((c, i) => ({ ...c, y: y.slice(i * 4, i * 4 + 4) })),
    fp16: {
      model: "fp16",
      shape: [3, 4],
      bits: fp16Bits,
      y_bits: Array.from(new Uint16Array(fp16Out.buffer, fp16Out.byteOffset, fp16Out.byteLength / 2)),
    },
    bf16: { model: "bf16", shape: [2, 4], values: bf16Values, bits: bf16Bits, y: floats(bf16Out) },
  };
}

beforeAll(async () => {
  if (!python) return;
  fleet = await startTestFleet({
    workers: 1,
    env: { MAX_WAIT_MS: String(WAIT_MS), BULK_MAX_JOBS: "16" },
    workerEnv: { WORKER_MODELS: "ocr-cls,multi,fp16,bf16,fails" },
  });
  const ocrBytes = new Uint8Array(readFileSync(OCR_CLS_PATH));
  await publishModel(fleet, ocrBytes, {
    name: "ocr-cls",
    version: "1.0.0",
    spec: { maxBatch: 8, inputs: { x: { range: [-1, 1], maxDim: 1024 } } },
  });
  await publishModel(fleet, buildMultiInputModel(), { name: "multi", version: "1", spec: { maxBatch: 8 } });
  await publishModel(fleet, buildIdentityModel("float16", ["N", 4]), {
    name: "fp16",
    version: "1",
    spec: { maxBatch: 4 },
  });
  await publishModel(fleet, buildIdentityModel("float32", ["N", 4]), {
    name: "bf16",
    version: "1",
    spec: { maxBatch: 4, inputs: { x: { dtype: "bfloat16", range: [-300, 300] } } },
  });
  await publishModel(fleet, buildFailingModel(), { name: "fails", version: "1", spec: { maxBatch: 4 } });
  await publishModel(fleet, buildIdentityModel("float32", ["N", 4]), {
    name: PARKED,
    version: "1",
    spec: { maxBatch: 4 },
  });
  // A tenant held to one request every two seconds (no refill between requests sent at
  // once, even on a stalled machine), for the client's 429 and Retry-After handling.
  const slowKey = await fleet.addTenant({ id: "py-slow", models: ["*"], requestRate: 0.5, requestBurst: 1 });
  fixturesPath = path.join(fleet.dir, "python-fixtures.json");
  writeFileSync(fixturesPath, JSON.stringify({ ...(await references(ocrBytes)), slow_key: slowKey }), { mode: 0o600 });
});
afterAll(async () => {
  await fleet?.close();
});

/** Runs the Python suite (asynchronously: the fleet it talks to lives in this process). */
function runSuite(args: string[], expectNumpy: boolean): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn("python3", args, {
      cwd: CLIENT_DIR,
      env: {
        ...process.env,
        PYTHONDONTWRITEBYTECODE: "1",
        CITADEL_API_URL: fleet.apiUrl,
        CITADEL_API_KEY: fleet.apiKey,
        CITADEL_TEST_FIXTURES: fixturesPath,
        CITADEL_EXPECT_NUMPY: expectNumpy ? "1" : "0",
      },
    });
    let output = "";
    child.stdout.on("data", (d: Buffer) => {
      output += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      output += d.toString();
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, output }));
  });
}

/** The tests unittest -v reports as skipped, by name. */
function skipped(output: string): string[] {
  return [...output.matchAll(/^(test_\w+) \([^)]*\)(?:\n[^\n]*)? \.\.\. skipped/gm)].map((m) => m[1] as string).sort();
}

describe.skipIf(!python)(
  `the Python client against a running fleet (${python ?? "python3 not found: skipped"})`,
  () => {
    it.skipIf(!numpy)("passes its unittest suite with numpy", { timeout: 600_000 }, async () => {
      const r = await runSuite(["-m", "unittest", "-v", "test_citadel_client"], true);
      expect(r.code, r.output).toBe(0);
      expect(r.output).toMatch(/^OK( \(skipped=\d+\))?$/m);
      // Only the test of a numpy-less machine is skipped; every fleet test ran.
      expect(skipped(r.output), r.output).toEqual(["test_without_numpy_the_helpers_say_so"]);
    });

    it("passes its unittest suite with numpy made unimportable", { timeout: 600_000 }, async () => {
      const r = await runSuite(["-c", HIDE_NUMPY], false);
      expect(r.code, r.output).toBe(0);
      expect(r.output).toMatch(/^OK( \(skipped=\d+\))?$/m);
      expect(skipped(r.output), r.output).toEqual([
        "test_numpy_helpers_match_the_struct_packing",
        "test_numpy_in_and_out",
      ]);
    });
  },
);
