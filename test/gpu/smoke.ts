/**
 * GPU smoke test: one script a person runs on a GPU node (NVIDIA driver, CUDA 12 and
 * TensorRT 10 libraries, onnxruntime-node's CUDA/TensorRT providers installed — the GPU
 * worker image has all of these) in well under five minutes. It proves on real hardware
 * what CI can only check structurally, through a real API and worker (REQUIRE_GPU=true):
 *
 *  0. which providers onnxruntime can load here (TensorRT, CUDA, CPU);
 *  1. CUDA: a conv net sealed with providers [cuda] is served by "cuda";
 *  2. TensorRT, ONNX path: the same model with [tensorrt] is served by "tensorrt";
 *  3. TensorRT, engine path (when `trtexec` is on PATH): the model compiled to an engine
 *     with a min/opt/max profile, sealed as an EPContext model, at batch 1 and max batch.
 *
 * For each: the provider that served it, the largest difference from a CPU onnxruntime
 * run of the same input (must be ≤ 1e-3), and throughput in samples/s through the fleet
 * next to onnxruntime on CPU alone.
 *
 * Usage: REDIS_URL=redis://… node --conditions=@citadel/source --import tsx test/gpu/smoke.ts
 * Exit 0 when every check for a provider this host has passed (and at least one GPU
 * provider is present); 1 otherwise. Prints one line per check. `--cpu` runs the same
 * check on the CPU provider instead (REQUIRE_GPU off): the script's own test, anywhere.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { ApiEnv, startApi } from "@citadel/api";
import { loadCliEnv, openContext } from "@citadel/cli/context";
import { publishSealed, type SealRequest, sealBytes } from "@citadel/cli/models";
import { parseEnv } from "@citadel/config";
import { initKeyring } from "@citadel/keys";
import { buildConvNet } from "@citadel/onnx";
import { deploymentKeyPattern } from "@citadel/queue";
import { loadableProviders, type ProviderName } from "@citadel/runtime";
import { TenantStore } from "@citadel/tenants";
import { startWorker, WorkerEnv } from "@citadel/worker";
import * as ort from "onnxruntime-node";

const out = (s: string) => process.stdout.write(`${s}\n`);
const cpuOnly = process.argv.includes("--cpu");
const started = performance.now();
const dir = mkdtempSync(path.join(os.tmpdir(), "citadel-gpu-smoke-"));
const prefix = `{gpu-smoke-${process.pid}}`;
const env: Record<string, string> = {
  REDIS_URL: process.env.REDIS_URL ?? "redis://127.0.0.1:6379",
  CITADEL_PREFIX: prefix,
  MODEL_STORE_DIR: path.join(dir, "store"),
  KEY_PROVIDER: "local",
  LOCAL_KEYRING: path.join(dir, "keyring.json"),
  LOG_LEVEL: "warn",
};
const model = buildConvNet({ filters: 32, layers: 2 });
const host = await loadableProviders(model);
out(`host  onnxruntime ${ort.env.versions.common}, providers this node can load: ${host.join(", ")}`);

initKeyring(env.LOCAL_KEYRING as string);
const ctx = openContext(loadCliEnv(env));
await ctx.redis.connect();
const api = await startApi(
  parseEnv(ApiEnv, {
    ...env,
    API_HOST: "127.0.0.1",
    API_PORT: "0",
    METRICS_PORT: "0",
    IP_RATE: "100000",
    IP_BURST: "100000",
  }),
);
const worker = await startWorker(
  parseEnv(WorkerEnv, { ...env, METRICS_PORT: "0", REQUIRE_GPU: cpuOnly ? "false" : "true" }),
);
const tenants = new TenantStore(ctx.redis, prefix);
await tenants.upsert({
  id: "smoke",
  models: ["*"],
  requestRate: 100_000,
  requestBurst: 100_000,
  sampleRate: 10_000_000,
  sampleBurst: 10_000_000,
});
const key = await tenants.issueKey("smoke");
const headers = { authorization: `Bearer ${key}`, "content-type": "application/json" };

const cpu = await ort.InferenceSession.create(model, { executionProviders: ["cpu"] });
let failures = 0;
const THROUGHPUT_JOBS = 64;

function input(batch: number, seed: number): Float32Array {
  return Float32Array.from({ length: batch * 3 * 32 * 32 }, (_, i) => Math.sin(i + seed));
}

async function submit(name: string, x: Float32Array, batch: number): Promise<string> {
  const body = JSON.stringify({
    model: name,
    inputs: { x: { dtype: "float32", shape: [batch, 3, 32, 32], data: Buffer.from(x.buffer).toString("base64") } },
  });
  const r = await fetch(`${api.url}/v1/jobs`, { method: "POST", headers, body });
  const j = (await r.json()) as { id?: string; error?: { code: string; message: string } };
  if (r.status !== 202 || !j.id) throw new Error(`submit: ${r.status} ${j.error?.code}: ${j.error?.message}`);
  return j.id;
}

interface JobView {
  status: string;
  result?: { provider: string; outputs: Record<string, { data: string }> };
  error?: { code: string; message: string };
}

async function result(id: string): Promise<{ provider: string; probs: Float32Array }> {
  // The API waits at most 30 s per request (MAX_WAIT_MS); a TensorRT build can take longer.
  const deadline = Date.now() + 240_000;
  let view: JobView;
  do {
    view = (await (await fetch(`${api.url}/v1/jobs/${id}?wait=30000`, { headers })).json()) as JobView;
  } while ((view.status === "queued" || view.status === "active") && Date.now() < deadline);
  if (view.status !== "completed" || !view.result)
    throw new Error(`${view.status} ${view.error?.code}: ${view.error?.message}`);
  const raw = Buffer.from(view.result.outputs.probs?.data ?? "", "base64");
  return {
    provider: view.result.provider,
    probs: new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)),
  };
}

/** Waits until the API's catalog lists the version (it refreshes on the registry event). */
async function published(name: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const r = (await (await fetch(`${api.url}/v1/models`, { headers })).json()) as {
      models?: { name: string; versions: { version: string }[] }[];
    };
    if (r.models?.some((m) => m.name === name && m.versions.some((v) => v.version === "1"))) return;
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error(`the API never listed ${name}@1`);
}

/** Samples/s of onnxruntime on CPU alone, for the same batches. */
async function cpuThroughput(batch: number): Promise<number> {
  const x = new ort.Tensor("float32", input(batch, 0), [batch, 3, 32, 32]);
  const t0 = performance.now();
  for (let i = 0; i < THROUGHPUT_JOBS; i++) await cpu.run({ x });
  return (THROUGHPUT_JOBS * batch) / ((performance.now() - t0) / 1000);
}

async function check(
  label: string,
  name: string,
  bytes: Uint8Array,
  req: Omit<SealRequest, "name" | "version">,
  want: ProviderName,
  batch: number,
) {
  if (!host.includes(want)) {
    out(`skip  ${label}: onnxruntime cannot load ${want} on this node`);
    return;
  }
  try {
    await publishSealed(ctx, await sealBytes(ctx, bytes, { name, version: "1", ...req }), { stable: true });
    await published(name);
    // Equality with CPU.
    const x = input(batch, 1);
    const one = await result(await submit(name, x, batch));
    if (one.provider !== want) throw new Error(`provider ${one.provider}, expected ${want}`);
    const direct = (await cpu.run({ x: new ort.Tensor("float32", x, [batch, 3, 32, 32]) })).probs?.data as Float32Array;
    const diff = Math.max(...Array.from(direct, (v, i) => Math.abs(v - (one.probs[i] ?? Number.NaN))));
    if (!(diff <= 1e-3)) throw new Error(`max |gpu − cpu| = ${diff}`);
    // Throughput through the fleet: many jobs at once, as clients would send them.
    const t0 = performance.now();
    const ids = await Promise.all(
      Array.from({ length: THROUGHPUT_JOBS }, (_, i) => submit(name, input(batch, i), batch)),
    );
    const all = await Promise.all(ids.map(result));
    const fleetRate = (THROUGHPUT_JOBS * batch) / ((performance.now() - t0) / 1000);
    const others = all.filter((r) => r.provider !== want).length;
    if (others) throw new Error(`${others} of ${THROUGHPUT_JOBS} jobs served by another provider`);
    const cpuRate = await cpuThroughput(batch);
    out(
      `ok    ${label}: provider ${want}, batch ${batch}, max |served − cpu| ${diff.toExponential(2)}, ` +
        `${Math.round(fleetRate)} samples/s through the fleet (onnxruntime CPU alone: ${Math.round(cpuRate)})`,
    );
  } catch (err) {
    failures++;
    out(`FAIL  ${label}: ${(err as Error).message}`);
  }
}

try {
  if (cpuOnly) {
    await check(
      "CPU (the script's own test)",
      "smoke-cpu",
      model,
      { spec: { executionProviders: ["cpu"], maxBatch: 32 } },
      "cpu",
      4,
    );
  } else if (!host.some((p) => p !== "cpu")) {
    failures++;
    out(
      "FAIL  no GPU provider loads here: check the driver, CUDA/cuDNN/TensorRT libraries and onnxruntime-node's GPU build",
    );
  }
  if (!cpuOnly)
    await check("CUDA", "smoke-cuda", model, { spec: { executionProviders: ["cuda"], maxBatch: 32 } }, "cuda", 4);
  if (!cpuOnly)
    await check(
      "TensorRT (ONNX)",
      "smoke-trt",
      model,
      { spec: { executionProviders: ["tensorrt"], maxBatch: 32 } },
      "tensorrt",
      4,
    );

  if (cpuOnly) {
    // GPU checks skipped on request.
  } else if (!host.includes("tensorrt")) {
    out("skip  TensorRT engine path: onnxruntime cannot load tensorrt on this node");
  } else if (spawnSync("trtexec", ["--help"], { stdio: "ignore" }).status !== 0) {
    out("skip  TensorRT engine path: trtexec is not on PATH (it ships in the nvcr.io/nvidia/tensorrt image)");
  } else {
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
        .split("\n")[0]
        ?.replace(".", "");
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
  }
} finally {
  await worker.close();
  await api.close();
  // The smoke test's own keys only.
  let cursor = "0";
  do {
    const [next, keys] = await ctx.redis.scan(cursor, "MATCH", deploymentKeyPattern(prefix), "COUNT", 1000);
    cursor = next;
    // One key per command: the deployment's keys span slots (a family each).
    for (const k of keys) await ctx.redis.unlink(k);
  } while (cursor !== "0");
  await ctx.close();
  await cpu.release();
  rmSync(dir, { recursive: true, force: true });
}
out(`done  in ${((performance.now() - started) / 1000).toFixed(1)} s, ${failures} failure(s)`);
process.exit(failures === 0 ? 0 : 1);
