/**
 * Cold start (issue 14): scale from zero as KEDA would. With an empty queue and no
 * worker for the model, one job is submitted through the API, then a fresh worker
 * process is started exactly as the fleet starts one (serving that model only), and
 * the job's result is awaited: total = submit → result. The worker itself reports
 * where its time went (citadel_worker_start_* and citadel_model_load_phase_seconds on
 * its /metrics), so the total splits into
 *
 *   submit        POST /v1/jobs until the API answered (the job queued);
 *   process start spawn → ready: exec and node bootstrap, module loading (`main`),
 *                 then env, Redis connections, registry read, consumers, listener;
 *   fetch         manifest reads, signature check, artifact read;
 *   key           the data key's unwrap: Vault Transit decrypt over HTTP (or the local keyring);
 *   decrypt       AES-GCM over the model file and its SHA-256 checks;
 *   session       runner thread, onnxruntime's load, InferenceSession.create;
 *   first run     the first session.run;
 *   rest          what is left: the job's pick-up, batching window, result write,
 *                 the client's notification.
 *
 * Then a few jobs one at a time on the now-warm worker give the warm latency beside it.
 * Keys come from Vault by default: the in-repo Vault API test server over HTTP on
 * 127.0.0.1, with the production policies (a decrypt-only worker token).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { type AppForm, OWN_FORM } from "@citadel/cli/fleet";
import {
  POLICY_DIR,
  prepareProductionKeys,
  startVaultTestServer,
  type VaultTestServer,
} from "../support/vault-server/index.js";
import {
  apiEnv,
  Client,
  type FleetSetup,
  freePort,
  type Proc,
  randomInput,
  say,
  setupFleet,
  startProc,
  workerEnv,
} from "./harness.js";
import { median, medianRun } from "./measure.js";
import type { Target } from "./targets.js";
import { jsonBody } from "./wire.js";

/** Phases a worker reports per model load (label values of citadel_model_load_phase_seconds). */
export const LOAD_PHASES = ["fetch", "key", "decrypt", "session", "first_run"] as const;
export type LoadPhase = (typeof LOAD_PHASES)[number];

/** What a worker's /metrics says about its start and one model's load. */
export interface ColdMetrics {
  /** When the process started, Unix seconds (citadel_worker_start_time_seconds). */
  startTime?: number;
  /** Seconds from process start to each stage (citadel_worker_start_seconds{stage}). */
  stages: { main?: number; ready?: number };
  /** Seconds per phase, summed over the model's loads (0 when not reported). */
  phases: Record<LoadPhase, number>;
  /** Observations per phase: 1 after one load. */
  counts: Record<LoadPhase, number>;
}

const LABEL = /(\w+)="((?:[^"\\]|\\.)*)"/g;

/** Reads the cold-start metrics for `model` from a Prometheus text exposition. */
export function parseColdMetrics(text: string, model: string): ColdMetrics {
  const zero = () => Object.fromEntries(LOAD_PHASES.map((p) => [p, 0])) as Record<LoadPhase, number>;
  const out: ColdMetrics = { stages: {}, phases: zero(), counts: zero() };
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line.trim());
    if (!m?.[1] || m[3] === undefined) continue;
    const [name, value] = [m[1], Number(m[3])];
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(LABEL)) if (l[1]) labels[l[1]] = l[2] ?? "";
    if (name === "citadel_worker_start_time_seconds") out.startTime = value;
    else if (name === "citadel_worker_start_seconds" && (labels.stage === "main" || labels.stage === "ready"))
      out.stages[labels.stage] = value;
    else if (name.startsWith("citadel_model_load_phase_seconds_") && labels.model === model) {
      const phase = labels.phase as LoadPhase;
      if (!LOAD_PHASES.includes(phase)) continue;
      if (name.endsWith("_sum")) out.phases[phase] += value;
      else if (name.endsWith("_count")) out.counts[phase] += value;
    }
  }
  return out;
}

/** One cold start, split (ms). The parts add up to `total`; `rest` is what the others leave. */
export interface ColdSplit {
  total: number;
  submit: number;
  /** spawn → ready, of which spawn → main (bootstrap, modules) and main → ready. */
  processStart: number;
  spawnToMain: number;
  mainToReady: number;
  fetch: number;
  key: number;
  decrypt: number;
  session: number;
  firstRun: number;
  rest: number;
}

/**
 * Splits one cold start from the bench's clock (Unix ms: when it submitted, spawned the
 * worker, got the result) and the worker's metrics. Both read the same system clock.
 */
export function coldSplit(t: { submitAt: number; spawnAt: number; resultAt: number }, m: ColdMetrics): ColdSplit {
  const start = (m.startTime ?? Number.NaN) * 1000;
  const readyAt = start + (m.stages.ready ?? Number.NaN) * 1000;
  const mainAt = start + (m.stages.main ?? Number.NaN) * 1000;
  const ms = (p: LoadPhase) => m.phases[p] * 1000;
  const s = {
    total: t.resultAt - t.submitAt,
    submit: t.spawnAt - t.submitAt,
    processStart: readyAt - t.spawnAt,
    spawnToMain: mainAt - t.spawnAt,
    mainToReady: readyAt - mainAt,
    fetch: ms("fetch"),
    key: ms("key"),
    decrypt: ms("decrypt"),
    session: ms("session"),
    firstRun: ms("first_run"),
  };
  const rest = s.total - s.submit - s.processStart - s.fetch - s.key - s.decrypt - s.session - s.firstRun;
  return { ...s, rest };
}

// ---------------------------------------------------------------------------------
// the fleet the row runs on
// ---------------------------------------------------------------------------------

export type ColdKeys = "vault" | "local";

export interface ColdFleet {
  fleet: FleetSetup;
  api: Proc;
  keys: ColdKeys;
  /** Env a worker gets on top of the fleet's (its own Vault token). */
  workerExtra: Record<string, string>;
  close(): Promise<void>;
}

/** A fleet of its own (prefix, API, keys) for the row, so its queues start empty. */
export async function startColdFleet(redisUrl: string, keys: ColdKeys): Promise<ColdFleet> {
  let vault: VaultTestServer | null = null;
  let fleet: FleetSetup | null = null;
  // Keys, signers and logs of this row: removed with the fleet.
  const dir = mkdtempSync(path.join(os.tmpdir(), "citadel-bench-cold-"));
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const env: Record<string, string> = {};
    const workerExtra: Record<string, string> = {};
    if (keys === "vault") {
      vault = await startVaultTestServer({ policyDir: POLICY_DIR });
      const file = path.join(dir, "trusted-signers.json");
      writeFileSync(file, JSON.stringify(await prepareProductionKeys(vault)), { mode: 0o600 });
      Object.assign(env, {
        KEY_PROVIDER: "vault",
        VAULT_ADDR: vault.addr,
        VAULT_AUTH: "token",
        VAULT_TOKEN: vault.createToken(["citadel-publisher"]),
        TRUSTED_SIGNERS: file,
      });
      workerExtra.VAULT_TOKEN = vault.createToken(["citadel-worker"]);
    }
    fleet = await setupFleet({ redisUrl, prefix: "{bench-cold}", dir, env });
    const port = await freePort();
    const api = await startProc(
      "api",
      "api-cold",
      apiEnv(fleet.env, port, { RESULT_TTL_MS: "120000" }),
      fleet.logDir,
      port,
    );
    const f = fleet;
    const v = vault;
    return {
      fleet: f,
      api,
      keys,
      workerExtra,
      close: async () => {
        await api.stop();
        await f.close();
        await v?.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await fleet?.close();
    await vault?.stop();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

// ---------------------------------------------------------------------------------
// the row
// ---------------------------------------------------------------------------------

export interface ColdModel {
  key: string;
  name: string;
  bytes: Uint8Array;
  dims: number[];
  input: string;
  range: [number, number];
}

export interface ColdResult {
  model: string;
  /** The median run by total, whole. */
  split: ColdSplit;
  totals: number[];
  /** Warm latency on the same worker right after, one job at a time (p50 of `warmJobs`). */
  warmP50: number;
  warmJobs: number;
}

export interface ColdOptions {
  repeats: number;
  threads: number;
  warmJobs: number;
  form: AppForm;
}

/** One model's cold starts, `o.repeats` of them, each on a fresh worker process. */
async function coldModel(cf: ColdFleet, m: ColdModel, o: ColdOptions, round: number): Promise<ColdResult> {
  const client = new Client(cf.api.url, cf.fleet.apiKey);
  const per = m.dims.reduce((a, b) => a * b, 1);
  const body = (seed: number) =>
    jsonBody(m.name, [{ name: m.input, shape: [1, ...m.dims], data: randomInput(per, seed) }]).body;
  const bodies = Array.from({ length: o.warmJobs + 3 }, (_, i) => body(2000 + i));
  const runs: ColdSplit[] = [];
  const warm: number[] = [];
  const now = () => performance.timeOrigin + performance.now();
  for (let r = 0; r < o.repeats; r++) {
    const submitAt = now();
    const sub = await client.submit(bodies[0] as string);
    if (sub.status !== 202 || !sub.id)
      throw new Error(`cold start: ${m.name}: submit answered ${sub.status} ${sub.code}`);
    const port = await freePort();
    const spawnAt = now();
    const [view, worker] = await Promise.all([
      client.waitFinal(sub.id, 30_000),
      startProc(
        "worker",
        `worker-cold-${m.name}-${round}-${r + 1}`,
        workerEnv(cf.fleet.env, port, `bench-cold-${m.name}-${r + 1}`, {
          ...cf.workerExtra,
          WORKER_MODELS: m.name,
          RUNTIME_THREADS: String(o.threads),
        }),
        cf.fleet.logDir,
        port,
        { form: o.form },
      ),
    ]);
    const resultAt = now();
    try {
      if (view.status !== "completed") throw new Error(`cold start: ${m.name}: job ${view.status}`);
      const text = await (await fetch(`${worker.url}/metrics`)).text();
      const cm = parseColdMetrics(text, m.name);
      if (cm.startTime === undefined || cm.counts.session === 0)
        throw new Error(
          `cold start: ${m.name}: the worker reports no start or load phases${o.form === "dist" ? " (a stale build? run pnpm build)" : ""}`,
        );
      const split = coldSplit({ submitAt, spawnAt, resultAt }, cm);
      runs.push(split);
      say(
        `cold start: ${m.name} ${r + 1}/${o.repeats}: ${cell(split.total)} ms (process start ${cell(split.processStart)}, key ${cell(split.key)}, decrypt ${cell(split.decrypt)}, session ${cell(split.session)}, first run ${cell(split.firstRun)})`,
      );
      // Warm: the same worker, one job at a time, after two more warm-ups.
      for (let i = 1; i < bodies.length; i++) {
        const t = performance.now();
        const w = await client.submitAndWait(bodies[i] as string);
        if (w.view?.status !== "completed") throw new Error(`cold start: ${m.name}: warm job ${w.status} ${w.code}`);
        if (i >= 3) warm.push(performance.now() - t);
      }
    } finally {
      await worker.stop();
    }
  }
  const split = medianRun(runs, (s) => s.total);
  return { model: m.name, split, totals: runs.map((s) => s.total), warmP50: median(warm), warmJobs: warm.length };
}

/** The row for every model; the models are published on the cold fleet first. */
export async function runColdStart(
  redisUrl: string,
  models: readonly ColdModel[],
  keys: ColdKeys,
  o: ColdOptions,
): Promise<ColdReport> {
  say(
    `cold start: keys from ${keyLabel(keys)}; worker ${o.form === "dist" ? "built (node dist/main.js)" : "from source (tsx)"}; ${o.repeats} run(s) per model`,
  );
  const cf = await startColdFleet(redisUrl, keys);
  const results: ColdResult[] = [];
  try {
    for (const m of models) {
      await cf.fleet.publish(m.bytes, {
        name: m.name,
        version: "1",
        spec: {
          maxBatch: 16,
          maxQueueDelayMs: 2,
          timeoutMs: 10_000,
          executionProviders: ["cpu"],
          inputs: { [m.input]: { range: m.range, maxDim: 4096 } },
        },
      });
    }
    // Let the API's catalog see the models (registry event, else its 5 s resync).
    await waitForCatalog(cf, models);
    for (const [i, m] of models.entries()) results.push(await coldModel(cf, m, o, i));
  } finally {
    await cf.close();
  }
  return { keys, form: o.form, repeats: o.repeats, results };
}

async function waitForCatalog(cf: ColdFleet, models: readonly ColdModel[]): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const r = await fetch(`${cf.api.url}/v1/models`, { headers: { authorization: `Bearer ${cf.fleet.apiKey}` } });
    const j = (await r.json().catch(() => ({}))) as { models?: { name: string }[] };
    if (models.every((m) => j.models?.some((x) => x.name === m.name))) return;
    if (Date.now() > deadline) throw new Error("cold start: the API never listed the published models");
    await new Promise((res) => setTimeout(res, 100));
  }
}

export interface ColdReport {
  keys: ColdKeys;
  form: AppForm;
  repeats: number;
  results: ColdResult[];
}

export const DEFAULT_COLD_FORM: AppForm = OWN_FORM;
/** Issue 14's goal for the sample models on this machine. */
export const COLD_START_GOAL_S = 3;

const keyLabel = (k: ColdKeys) =>
  k === "vault" ? "Vault Transit (the in-repo Vault API test server, HTTP on 127.0.0.1)" : "the local keyring";

/** A figure in ms: whole above 100, one decimal below. */
const cell = (n: number) => (Number.isFinite(n) ? n.toFixed(Math.abs(n) >= 100 ? 0 : 1) : "-");

/** The row's lines for the report: the columns from submit to rest add up to the total. */
export function coldLines(r: ColdReport): string[] {
  const header = [
    "model",
    "total ms",
    "submit",
    "process start",
    "fetch",
    "key",
    "decrypt",
    "session",
    "first run",
    "rest",
    "warm p50 ms",
  ];
  const rows = r.results.map((x) => {
    const s = x.split;
    const figures = [s.total, s.submit, s.processStart, s.fetch, s.key, s.decrypt, s.session, s.firstRun, s.rest];
    return [x.model, ...figures.map(cell), cell(x.warmP50)];
  });
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((row) => (row[c] ?? "").length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join("  ");
  return [
    `cold start: empty queue, one job, then a fresh worker process (${r.form === "dist" ? "built" : "from source, tsx"}); key: ${keyLabel(r.keys)}; ${r.repeats === 1 ? "one run" : `median of ${r.repeats} by total`}; warm p50: the same worker, one job at a time`,
    `  ${line(header)}`,
    ...rows.map((row) => `  ${line(row)}`),
    ...r.results.map(
      (x) =>
        `  ${x.model}: process start = spawn → main ${cell(x.split.spawnToMain)} ms (node, modules) + main → ready ${cell(x.split.mainToReady)} ms; totals ${x.totals.map(cell).join(", ")} ms`,
    ),
  ];
}

export function coldTargets(r: ColdReport | null): Target[] {
  return (r?.results ?? []).map((x) => ({
    name: `cold start (${x.model}): submit → result, from zero workers`,
    value: x.split.total / 1000,
    op: "<=",
    goal: COLD_START_GOAL_S,
    unit: " s",
  }));
}

const r1 = (n: number) => (Number.isFinite(n) ? Math.round(n * 10) / 10 : null);

/** The row in the final JSON line. */
export function coldJson(r: ColdReport) {
  return {
    keys: r.keys,
    form: r.form,
    repeats: r.repeats,
    models: Object.fromEntries(
      r.results.map((x) => [
        x.model,
        {
          ...Object.fromEntries(Object.entries(x.split).map(([k, v]) => [`${k}Ms`, r1(v)])),
          totalsMs: x.totals.map(r1),
          warmP50Ms: r1(x.warmP50),
          warmJobs: x.warmJobs,
        },
      ]),
    ),
  };
}
