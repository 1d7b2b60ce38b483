/**
 * GPU smoke test: run on a GPU node (NVIDIA driver, CUDA 12 and TensorRT 10 libraries,
 * onnxruntime-node's CUDA/TensorRT providers installed — the GPU worker image has all
 * of these). It proves, on real hardware, what CI can only check structurally:
 *
 *  1. CUDA: a conv net sealed with providers [cuda] loads under REQUIRE_GPU=true,
 *     reports provider "cuda", and matches a CPU run within 1e-4.
 *  2. TensorRT, ONNX path: the same model with [tensorrt] reports "tensorrt".
 *  3. TensorRT, engine path (when `trtexec` is on PATH): the model is compiled to an
 *     engine with a min/opt/max profile, sealed as an EPContext model (embed_mode=1),
 *     loaded from memory and run at batch 1 and at max batch.
 *
 * Usage: REDIS_URL=redis://… node --conditions=@citadel/source --import tsx test/gpu/smoke.ts
 * Exit 0 when every available check passed; prints one line per check.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { ApiEnv, startApi } from "@citadel/api";
import { loadCliEnv, openContext } from "@citadel/cli/context";
import { publishSealed, type SealRequest, sealBytes } from "@citadel/cli/models";
import { parseEnv } from "@citadel/config";
import { initKeyring } from "@citadel/keys";
import { buildConvNet } from "@citadel/onnx";
import { TenantStore } from "@citadel/tenants";
import { startWorker, WorkerEnv } from "@citadel/worker";
import * as ort from "onnxruntime-node";

const out = (s: string) => process.stdout.write(`${s}\n`);
const dir = mkdtempSync(path.join(os.tmpdir(), "citadel-gpu-smoke-"));
const env: Record<string, string> = {
  REDIS_URL: process.env.REDIS_URL ?? "redis://127.0.0.1:6379",
  CITADEL_PREFIX: `{gpu-smoke-${process.pid}}`,
  MODEL_STORE_DIR: path.join(dir, "store"),
  KEY_PROVIDER: "local",
  LOCAL_KEYRING: path.join(dir, "keyring.json"),
  LOG_LEVEL: "warn",
};
initKeyring(env.LOCAL_KEYRING as string);
const ctx = openContext(loadCliEnv(env));
await ctx.redis.connect();
const api = await startApi(parseEnv(ApiEnv, { ...env, API_HOST: "127.0.0.1", API_PORT: "0" }));
const worker = await startWorker(parseEnv(WorkerEnv, { ...env, METRICS_PORT: "0", REQUIRE_GPU: "true" }));
const tenants = new TenantStore(ctx.redis, env.CITADEL_PREFIX as string);
await tenants.upsert({ id: "smoke", models: ["*"] });
const key = await tenants.issueKey("smoke");
const headers = { authorization: `Bearer ${key}`, "content-type": "application/json" };

const model = buildConvNet({ filters: 32, layers: 2 });
const cpu = await ort.InferenceSession.create(model);
let failures = 0;

async function check(
  label: string,
  name: string,
  bytes: Uint8Array,
  req: Omit<SealRequest, "name" | "version">,
  want: string,
  batch: number,
) {
  try {
    await publishSealed(ctx, await sealBytes(ctx, bytes, { name, version: "1", ...req }), { stable: true });
    await new Promise((r) => setTimeout(r, 300)); // catalog refresh on the registry event
    const x = Float32Array.from({ length: batch * 3 * 32 * 32 }, (_, i) => Math.sin(i));
    const body = JSON.stringify({
      model: name,
      inputs: { x: { dtype: "float32", shape: [batch, 3, 32, 32], data: Buffer.from(x.buffer).toString("base64") } },
    });
    const sub = (await (await fetch(`${api.url}/v1/jobs`, { method: "POST", headers, body })).json()) as { id: string };
    const view = (await (await fetch(`${api.url}/v1/jobs/${sub.id}?wait=120000`, { headers })).json()) as {
      status: string;
      result?: { provider: string; outputs: Record<string, { data: string }> };
      error?: { code: string; message: string };
    };
    if (view.status !== "completed" || !view.result)
      throw new Error(`${view.status} ${view.error?.code}: ${view.error?.message}`);
    if (view.result.provider !== want) throw new Error(`provider ${view.result.provider}, expected ${want}`);
    const direct = (await cpu.run({ x: new ort.Tensor("float32", x, [batch, 3, 32, 32]) })).probs?.data as Float32Array;
    const raw = Buffer.from(view.result.outputs.probs?.data ?? "", "base64");
    const got = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
    const diff = Math.max(...Array.from(direct, (v, i) => Math.abs(v - (got[i] ?? Number.NaN))));
    if (!(diff <= 1e-3)) throw new Error(`max |gpu − cpu| = ${diff}`);
    out(`ok    ${label}: provider ${want}, batch ${batch}, max |gpu − cpu| ${diff.toExponential(2)}`);
  } catch (err) {
    failures++;
    out(`FAIL  ${label}: ${(err as Error).message}`);
  }
}

await check("CUDA", "smoke-cuda", model, { spec: { executionProviders: ["cuda"], maxBatch: 32 } }, "cuda", 4);
await check(
  "TensorRT (ONNX)",
  "smoke-trt",
  model,
  { spec: { executionProviders: ["tensorrt"], maxBatch: 32 } },
  "tensorrt",
  4,
);

if (spawnSync("trtexec", ["--help"], { stdio: "ignore" }).status === 0) {
  const onnxFile = path.join(dir, "conv.onnx");
  const engineFile = path.join(dir, "conv.engine");
  writeFileSync(onnxFile, model);
  const built = spawnSync(
    "trtexec",
    [
      `--onnx=${onnxFile}`,
      `--saveEngine=${engineFile}`,
      "--minShapes=x:1x3x32x32",
      "--optShapes=x:8x3x32x32",
      "--maxShapes=x:32x3x32x32",
    ],
    { stdio: "ignore" },
  );
  if (built.status !== 0) {
    failures++;
    out("FAIL  trtexec could not build the engine");
  } else {
    const arch = spawnSync("nvidia-smi", ["--query-gpu=compute_cap", "--format=csv,noheader"], { encoding: "utf8" })
      .stdout.trim()
      .replace(".", "");
    const engineIo = {
      inputs: [{ name: "x", dtype: "float32" as const, shape: ["N", 3, 32, 32] }],
      outputs: [{ name: "probs", dtype: "float32" as const, shape: ["N", 10] }],
    };
    const spec = { maxBatch: 32, tensorrt: { gpuArch: arch || "unknown", minBatch: 1, optBatch: 8, maxBatch: 32 } };
    const engine = readFileSync(engineFile);
    await check("TensorRT engine as EPContext, batch 1", "smoke-engine", engine, { spec, engineIo }, "tensorrt", 1);
    await check(
      "TensorRT engine as EPContext, max batch",
      "smoke-engine-max",
      engine,
      { spec, engineIo },
      "tensorrt",
      32,
    );
  }
} else {
  out("skip  TensorRT engine path: trtexec is not on PATH (it ships in the nvcr.io/nvidia/tensorrt image)");
}

await worker.close();
await api.close();
await ctx.close();
process.exit(failures === 0 ? 0 : 1);
