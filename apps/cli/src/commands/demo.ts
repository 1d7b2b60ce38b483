import { randomBytes } from "node:crypto";
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { initKeyring } from "@citadel/keys";
import { deploymentKeyPattern, scanKeys } from "@citadel/queue";
import { TenantStore } from "@citadel/tenants";
import { SingleBar } from "cli-progress";
import * as ort from "onnxruntime-node";
import { type CliContext, loadCliEnv, openContext, print } from "../context.js";
import { type FleetProcess, freePort, startProcess } from "../fleet.js";
import { publishSealed, sealBytes } from "../models.js";
import { prng, SAMPLE_MODELS, type SampleModel } from "../sample-models.js";

export interface DemoOptions {
  jobs: number;
  workers: number;
  serve: boolean;
  publishOnly: boolean;
  dir: string;
  verify: boolean;
}

interface Submitted {
  model: SampleModel;
  batch: number;
  input: Float32Array;
  id: string;
  t0: number;
}

/** Deletes the demo's own keys (its prefix) so every run starts clean. */
async function resetPrefix(ctx: CliContext): Promise<void> {
  // One DEL per key: on a cluster a multi-key DEL must stay within one slot.
  for (const key of await scanKeys(ctx.redis, deploymentKeyPattern(ctx.env.CITADEL_PREFIX))) await ctx.redis.del(key);
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

/**
 * The main job end to end: a dev keyring; the sample models sealed in memory and
 * published; the API and workers started as real processes; jobs pushed over HTTP;
 * results fetched, checked against onnxruntime, and summarised.
 */
export async function runDemo(o: DemoOptions): Promise<number> {
  const dir = path.resolve(o.dir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const keyring = path.join(dir, "keyring.json");
  const store = path.join(dir, "store");
  const baseEnv = {
    REDIS_URL: process.env.REDIS_URL ?? "redis://127.0.0.1:6379",
    // The demo's processes reach the same cluster, when one is named.
    ...(process.env.REDIS_CLUSTER_NODES ? { REDIS_CLUSTER_NODES: process.env.REDIS_CLUSTER_NODES } : {}),
    CITADEL_PREFIX: process.env.CITADEL_PREFIX ?? "{citadel-demo}",
    MODEL_STORE_DIR: store,
    KEY_PROVIDER: "local",
    LOCAL_KEYRING: keyring,
    LOG_LEVEL: process.env.LOG_LEVEL ?? "info",
    NODE_ENV: "development",
  };
  // --publish-only seeds a real deployment (compose, k8s): it takes every setting from
  // the environment (Vault included) and leaves existing state alone.
  const env = o.publishOnly ? loadCliEnv() : loadCliEnv(baseEnv);
  if (env.KEY_PROVIDER === "local" && initKeyring(env.LOCAL_KEYRING)) {
    print(`keys:     created dev keyring ${path.relative(process.cwd(), env.LOCAL_KEYRING)} (mode 0600)`);
  }
  const ctx = openContext(env);
  const procs: FleetProcess[] = [];
  try {
    await ctx.redis.connect();
    if (!o.publishOnly) await resetPrefix(ctx);
    for (const m of SAMPLE_MODELS) {
      if (o.publishOnly && (await ctx.registry.versions(m.name)).includes(m.version)) {
        print(`model:    ${m.name}@${m.version} already published; left as is`);
        continue;
      }
      const bytes = await m.load();
      const sealed = await sealBytes(ctx, bytes, { name: m.name, version: m.version, spec: m.spec });
      bytes.fill(0);
      await publishSealed(ctx, sealed, { stable: true });
      const a = sealed.signed.manifest.artifact;
      print(
        `model:    ${m.name}@${m.version} sealed (${a.ciphertextBytes} B, sha256 ${a.plaintextSha256.slice(0, 12)}…, key ${a.wrappedKey.slice(0, 9)}…) and published`,
      );
    }
    if (o.publishOnly) return 0;

    const tenants = new TenantStore(ctx.redis, ctx.env.CITADEL_PREFIX);
    await tenants.upsert({
      id: "demo",
      models: ["*"],
      requestRate: 5000,
      requestBurst: 10000,
      sampleRate: 100_000,
      sampleBurst: 200_000,
    });
    const apiKey = await tenants.issueKey("demo");
    const boardPassword = randomBytes(18).toString("base64url");
    const opsPassword = randomBytes(18).toString("base64url");
    const logDir = path.join(dir, "logs");
    const apiPort = await freePort();
    const apiMetricsPort = await freePort();
    const api = await startProcess(
      "api",
      "api",
      {
        ...baseEnv,
        API_HOST: "127.0.0.1",
        API_PORT: String(apiPort),
        METRICS_HOST: "127.0.0.1",
        METRICS_PORT: String(apiMetricsPort),
        BOARD_ADMIN_PASSWORD: boardPassword,
        BOARD_OPS_PASSWORD: opsPassword,
        IP_RATE: "500",
        IP_BURST: "1500",
      },
      logDir,
      `http://127.0.0.1:${apiPort}/readyz`,
    );
    procs.push(api);
    for (let i = 0; i < o.workers; i++) {
      const port = await freePort();
      procs.push(
        await startProcess(
          "worker",
          `worker-${i + 1}`,
          {
            ...baseEnv,
            WORKER_ID: `demo-worker-${i + 1}`,
            METRICS_HOST: "127.0.0.1",
            METRICS_PORT: String(port),
            RUNTIME_THREADS: "1",
          },
          logDir,
          `http://127.0.0.1:${port}/readyz`,
        ),
      );
    }
    print(
      `fleet:    api ${api.url} (board ${api.url}/admin/queues, docs ${api.url}/docs), ${o.workers} workers; logs in ${path.relative(process.cwd(), logDir)}/`,
    );

    if (o.serve) {
      const state = {
        apiUrl: api.url,
        apiKey,
        tenant: "demo",
        board: { url: `${api.url}/admin/queues`, user: "admin", password: boardPassword, opsUser: "ops", opsPassword },
        redisUrl: baseEnv.REDIS_URL,
        prefix: baseEnv.CITADEL_PREFIX,
        modelStore: store,
        models: SAMPLE_MODELS.map((m) => m.name),
        workers: procs.slice(1).map((p) => p.url),
        apiMetricsUrl: `http://127.0.0.1:${apiMetricsPort}`,
        // The processes this CLI started: they stop when it does, however it ends.
        pids: Object.fromEntries(procs.map((p) => [p.name, p.child.pid ?? null])),
      };
      const file = path.join(dir, "demo.json");
      writeFileSync(file, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
      chmodSync(file, 0o600);
      print(`serving:  fleet details in ${path.relative(process.cwd(), file)} (mode 0600); Ctrl-C to stop`);
    }

    const workerUrls = procs.slice(1).map((p) => p.url);
    const code = o.jobs > 0 ? await pushJobs(api.url, apiKey, o, workerUrls) : 0;
    if (o.serve) {
      await new Promise<void>((resolve) => {
        process.once("SIGINT", () => resolve());
        process.once("SIGTERM", () => resolve());
      });
    }
    return code;
  } finally {
    const codes = await Promise.all(procs.map((p) => p.stop()));
    if (procs.length) print(`stopped:  ${procs.map((p, i) => `${p.name} exit ${codes[i]}`).join(", ")}`);
    await ctx.close();
  }
}

async function pushJobs(apiUrl: string, apiKey: string, o: DemoOptions, workerUrls: string[]): Promise<number> {
  const rand = prng(7);
  const headers = { authorization: `Bearer ${apiKey}`, "content-type": "application/json" };
  const bar = new SingleBar(
    { format: "jobs     [{bar}] {value}/{total} {phase}", hideCursor: true, stream: process.stderr },
    undefined,
  );
  bar.start(o.jobs, 0, { phase: "submitted" });
  const t0 = performance.now();
  const submitted: Submitted[] = [];
  const plan = Array.from({ length: o.jobs }, (_, i) => {
    const model = SAMPLE_MODELS[i % 3 === 2 ? 1 : 0] as SampleModel;
    const batch = model.name === "conv-small" ? 1 + Math.floor(rand() * 4) : 1;
    return { model, batch, ...model.input(batch, rand) };
  });
  let next = 0;
  const failures: string[] = [];
  const submitOne = async () => {
    for (;;) {
      const i = next++;
      const p = plan[i];
      if (!p) return;
      const body = JSON.stringify({
        model: p.model.name,
        inputs: { [p.name]: { dtype: "float32", shape: p.shape, data: Buffer.from(p.data.buffer).toString("base64") } },
      });
      const start = performance.now();
      const res = await fetch(`${apiUrl}/v1/jobs`, { method: "POST", headers, body });
      const json = (await res.json()) as { id?: string; error?: { code: string; message: string } };
      if (res.status !== 202 || !json.id) failures.push(`submit ${res.status} ${json.error?.code}`);
      else submitted.push({ model: p.model, batch: p.batch, input: p.data, id: json.id, t0: start });
      bar.increment();
    }
  };
  await Promise.all(Array.from({ length: 32 }, submitOne));
  bar.update(0, { phase: "completed" });
  const latencies: number[] = [];
  const providers = new Set<string>();
  const results = new Map<string, Record<string, { dtype: string; shape: number[]; data: string }>>();
  let idx = 0;
  const waitOne = async () => {
    for (;;) {
      const s = submitted[idx++];
      if (!s) return;
      let view: {
        status: string;
        result?: {
          outputs: Record<string, { dtype: string; shape: number[]; data: string }>;
          provider: string;
        };
        error?: { code: string; message: string };
      };
      do {
        const r = await fetch(`${apiUrl}/v1/jobs/${s.id}?wait=30000`, { headers });
        view = (await r.json()) as typeof view;
      } while (view.status === "queued" || view.status === "active");
      latencies.push(performance.now() - s.t0);
      if (view.status === "completed" && view.result) {
        providers.add(view.result.provider);
        results.set(s.id, view.result.outputs);
      } else failures.push(`${s.id}: ${view.status} ${view.error?.code ?? ""} ${view.error?.message ?? ""}`);
      bar.increment();
    }
  };
  await Promise.all(Array.from({ length: 32 }, waitOne));
  bar.stop();
  const seconds = (performance.now() - t0) / 1000;
  const samples = submitted.reduce((a, s) => a + s.batch, 0);

  let maxDiff = 0;
  let checked = 0;
  if (o.verify) {
    // The fleet's outputs against a direct onnxruntime run of the same plaintext model.
    for (const m of SAMPLE_MODELS) {
      const bytes = await m.load();
      const session = await ort.InferenceSession.create(bytes, { executionProviders: ["cpu"] });
      bytes.fill(0);
      for (const s of submitted.filter((x) => x.model === m)) {
        const out = results.get(s.id);
        if (!out) continue;
        const direct = await session.run({
          x: new ort.Tensor("float32", s.input, [s.batch, ...(m.name === "conv-small" ? [3, 32, 32] : [3, 48, 192])]),
        });
        for (const [name, t] of Object.entries(out)) {
          const want = direct[name]?.data as Float32Array;
          const raw = Buffer.from(t.data, "base64");
          const got = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
          for (let k = 0; k < want.length; k++)
            maxDiff = Math.max(maxDiff, Math.abs((want[k] ?? 0) - (got[k] ?? Number.NaN)));
          checked++;
        }
      }
      await session.release();
    }
  }
  latencies.sort((a, b) => a - b);
  print("");
  print("summary");
  print(
    `  jobs        ${submitted.length} accepted of ${o.jobs}, ${results.size} completed, ${failures.length} failed`,
  );
  print(
    `  throughput  ${(submitted.length / seconds).toFixed(1)} jobs/s, ${(samples / seconds).toFixed(1)} samples/s over ${seconds.toFixed(2)} s`,
  );
  print(
    `  latency     p50 ${percentile(latencies, 50).toFixed(1)} ms, p99 ${percentile(latencies, 99).toFixed(1)} ms (submit → result)`,
  );
  // A result reports its own job's samples only (another tenant's volume is not its
  // business); the run sizes come from the workers' own counters.
  const runs = await runTotals(workerUrls);
  print(
    `  batching    average batch ${(runs.samples / Math.max(1, runs.executions)).toFixed(2)} samples per run (${runs.executions} runs)`,
  );
  print(`  providers   ${[...providers].join(", ") || "none"}`);
  if (o.verify) {
    const verdict = maxDiff <= 1e-5 ? "equal" : "DIFFER FROM";
    print(
      `  correctness ${checked} outputs ${verdict} a direct onnxruntime run (max |diff| ${maxDiff.toExponential(2)})`,
    );
  }
  for (const f of failures.slice(0, 10)) print(`  failure     ${f}`);
  return failures.length === 0 && (!o.verify || maxDiff <= 1e-5) ? 0 : 1;
}

/** Samples and executions summed over the workers' Prometheus counters. */
async function runTotals(workerUrls: string[]): Promise<{ samples: number; executions: number }> {
  const total = { samples: 0, executions: 0 };
  for (const url of workerUrls) {
    const text = await (await fetch(`${url}/metrics`)).text();
    for (const line of text.split("\n")) {
      const value = Number(line.split(" ").pop());
      if (line.startsWith("citadel_inference_count_total{")) total.samples += value;
      if (line.startsWith("citadel_inference_exec_count_total{")) total.executions += value;
    }
  }
  return total;
}
