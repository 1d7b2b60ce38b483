/**
 * Fault-injection scenarios against real processes: the API and workers as child
 * processes, a redis-server of our own (AOF, appendfsync always), the Vault-API test
 * server. Each scenario submits jobs over HTTP, injects its fault, drains, and
 * accounts for every accepted job: completed, failed (by code), lost (never final),
 * duplicated (a second committed result, or a second job for one idempotency key).
 * Used by test/reliability/run.ts (full) and test/e2e/reliability-short.test.ts (short).
 */
import { createHash, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { auditStreamKey, auditWriters } from "@citadel/audit";
import { buildConvNet, buildHeavyConvNet, buildIdentityModel } from "@citadel/onnx";
import { deploymentKeyPattern, keys, qualifiedQueueName, type RedisConn, scanKeys } from "@citadel/queue";
import * as ort from "onnxruntime-node";
import {
  apiEnv,
  b64,
  Client,
  decodeF32,
  type FleetSetup,
  freePort,
  type OwnRedis,
  type Proc,
  type ResultView,
  randomInput,
  rssOf,
  say,
  setupFleet,
  sleep,
  startProc,
  workerEnv,
} from "../bench/harness.js";
import { POLICY_DIR, startVaultTestServer } from "../support/vault-server/index.js";
import { type LogicalOf, monitorBytes, type RedisWitness, type WitnessScope } from "./witness.js";

export interface Row {
  fault: string;
  submitted: number;
  accepted: number;
  completed: number;
  failed: Record<string, number>;
  lost: number;
  duplicated: number;
  /** Named checks beyond the counts (e.g. "503 while Redis is down"). */
  checks: { name: string; ok: boolean; detail?: string }[];
  notes: string[];
}

export interface ScenarioEnv {
  redis: OwnRedis;
  /** Redis's MONITOR feed: duplicates counted from what Redis executed. */
  witness: RedisWitness;
  /** Short (CI) or full form. */
  short: boolean;
}

const fmtCodes = (r: Record<string, number>) =>
  Object.entries(r)
    .map(([k, v]) => `${k}:${v}`)
    .join(" ") || "0";

export function formatTable(rows: Row[]): string {
  const head = ["fault", "submitted", "accepted", "completed", "failed (by code)", "lost", "duplicated", "checks"];
  const body = rows.map((r) => [
    r.fault,
    String(r.submitted),
    String(r.accepted),
    String(r.completed),
    fmtCodes(r.failed),
    String(r.lost),
    String(r.duplicated),
    `${r.checks.filter((c) => c.ok).length}/${r.checks.length}`,
  ]);
  const all = [head, ...body];
  const w = head.map((_, c) => Math.max(...all.map((r) => (r[c] ?? "").length)));
  const line = (r: string[]) =>
    r.map((x, c) => (c === 0 || c === 4 ? x.padEnd(w[c] ?? 0) : x.padStart(w[c] ?? 0))).join("  ");
  const out = [line(head), w.map((n) => "-".repeat(n)).join("  "), ...body.map(line)];
  for (const r of rows) {
    for (const c of r.checks)
      out.push(`  [${c.ok ? "ok" : "FAIL"}] ${r.fault}: ${c.name}${c.detail ? ` (${c.detail})` : ""}`);
    for (const n of r.notes) out.push(`  note  ${r.fault}: ${n}`);
  }
  return out.join("\n");
}

export function rowPassed(r: Row): boolean {
  return r.lost === 0 && r.duplicated === 0 && r.checks.every((c) => c.ok);
}

// ---------------------------------------------------------------------------------
// accounting
// ---------------------------------------------------------------------------------

interface Accepted {
  id: string;
  /** Index into the input pool (for comparing outputs), or -1. */
  input: number;
  key?: string;
}

class Ledger {
  submitted = 0;
  /** Sends repeated with the same Idempotency-Key after a network error or a 5xx. */
  retried = 0;
  readonly accepted = new Map<string, Accepted>();
  /** Idempotency key → every id the API returned for it. */
  readonly idsByKey = new Map<string, Set<string>>();
  readonly refused: Record<string, number> = {};

  accept(a: Accepted): void {
    this.accepted.set(a.id, a);
    if (a.key) {
      const s = this.idsByKey.get(a.key) ?? new Set();
      s.add(a.id);
      this.idsByKey.set(a.key, s);
    }
  }

  refuse(code: string): void {
    this.refused[code] = (this.refused[code] ?? 0) + 1;
  }
}

/** Polls `cond` until it holds (true) or `timeoutMs` passes (false). */
async function holdsWithin(cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) return false;
    await sleep(50);
  }
  return true;
}

/** Polls `cond` until it holds; throws (naming `what`) after `timeoutMs`. */
async function waitUntil(cond: () => boolean | Promise<boolean>, what: string, timeoutMs: number): Promise<void> {
  if (!(await holdsWithin(cond, timeoutMs))) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/**
 * Sends as a careful client does: with an Idempotency-Key, and again with the same key
 * after a network error or a 5xx (the first try may have landed: the API answers 503
 * when its enqueue outlasts a bound, and the job can still be stored). Returns the last
 * answer, or null when every try failed on the network.
 */
async function keyed<T extends { status: number }>(
  ledger: Ledger,
  send: () => Promise<T>,
  tries = 100,
): Promise<T | null> {
  let last: T | null = null;
  for (let i = 0; i < tries; i++) {
    if (i > 0) {
      ledger.retried++;
      await sleep(100);
    }
    last = await send().catch(() => null);
    if (last && last.status < 500) return last;
  }
  return last;
}

/**
 * Waits until the model queues hold nothing waiting, delayed or active, for as long as
 * jobs keep completing (a backlog is slow, not lost); gives up after `stallMs` without
 * progress or `capMs` in all. Then `drain` only has stragglers left.
 */
export async function waitIdle(
  redis: RedisConn,
  prefix: string,
  models: string[],
  stallMs = 30_000,
  capMs = 600_000,
): Promise<void> {
  const end = Date.now() + capMs;
  let lastDone = -1;
  let lastProgress = Date.now();
  while (Date.now() < end && Date.now() - lastProgress < stallMs) {
    let pending = 0;
    let done = 0;
    for (const m of models) {
      const k = (part: string) => keys.bull(prefix, m, part);
      const [w, a, d, p, c, f] = await Promise.all([
        redis.llen(k("wait")),
        redis.llen(k("active")),
        redis.zcard(k("delayed")),
        redis.zcard(k("prioritized")),
        redis.zcard(k("completed")),
        redis.zcard(k("failed")),
      ]);
      pending += w + a + d + p;
      done += c + f;
    }
    if (pending === 0) return;
    if (done !== lastDone) {
      lastDone = done;
      lastProgress = Date.now();
    }
    await sleep(500);
  }
}

/** Long-polls every accepted id until it is final or the deadline passes. */
async function drain(client: Client, ids: string[], deadlineMs: number): Promise<Map<string, ResultView>> {
  const views = new Map<string, ResultView>();
  const end = Date.now() + deadlineMs;
  let next = 0;
  const one = async () => {
    for (;;) {
      const id = ids[next++];
      if (!id) return;
      while (Date.now() < end) {
        try {
          const { status, view } = await client.view(id, Math.min(5000, Math.max(1, end - Date.now())));
          if (status === 200 && view.status !== "queued" && view.status !== "active") {
            views.set(id, view);
            break;
          }
          if (status !== 200) await sleep(200);
        } catch {
          await sleep(200);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: 16 }, one));
  return views;
}

/** job.completed records per job id in the audit streams (one per writer). */
async function auditCompletions(redis: RedisConn, prefix: string): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const writer of await auditWriters(redis, prefix)) {
    let from = "-";
    for (;;) {
      const batch = (await redis.xrange(auditStreamKey(prefix, writer), from, "+", "COUNT", 5000)) as [
        string,
        string[],
      ][];
      for (const [, fields] of batch) {
        const i = fields.indexOf("r");
        const raw = i >= 0 ? fields[i + 1] : undefined;
        if (!raw) continue;
        const rec = JSON.parse(raw) as { event?: string; jobId?: string };
        if (rec.event === "job.completed" && rec.jobId) counts.set(rec.jobId, (counts.get(rec.jobId) ?? 0) + 1);
      }
      if (batch.length < 5000) break;
      const last = batch[batch.length - 1]?.[0] ?? "";
      const [ms, seq] = last.split("-");
      from = `${ms}-${Number(seq) + 1}`;
    }
  }
  return counts;
}

/**
 * Turns a ledger, its final views and the witness's evidence into a row. Duplicates are
 * counted from what Redis itself executed (MONITOR: a logical request with a second job,
 * a job stored twice, a job completed twice, a job no client was given) and from the
 * client's record (an idempotency key answered with two ids); the audit stream, which
 * Citadel writes, is only compared against them.
 */
async function account(
  fault: string,
  ledger: Ledger,
  views: Map<string, ResultView>,
  scope: WitnessScope,
  redis: RedisConn,
): Promise<Row> {
  scope.close();
  const failed: Record<string, number> = {};
  let completed = 0;
  let lost = 0;
  const completedIds: string[] = [];
  for (const id of ledger.accepted.keys()) {
    const v = views.get(id);
    if (!v) {
      lost++;
      continue;
    }
    if (v.status === "completed") {
      completed++;
      completedIds.push(id);
    } else {
      const code = v.error?.code ?? v.status.toUpperCase();
      failed[code] = (failed[code] ?? 0) + 1;
    }
  }
  const kinds: string[] = [];
  // Extra jobs: a second job behind one logical request, or a job no client was told about.
  const extraJobs = new Set<string>();
  for (const [logical, ids] of scope.idsByLogical) {
    if (ids.size < 2) continue;
    kinds.push(`request ${logical}: ${ids.size} jobs stored (${[...ids].join(", ")})`);
    const keep = [...ids].find((id) => ledger.accepted.has(id)) ?? [...ids][0];
    for (const id of ids) if (id !== keep) extraJobs.add(id);
  }
  for (const id of scope.stored.keys()) {
    if (ledger.accepted.has(id)) continue;
    kinds.push(`${id}: stored in Redis, but no client was given its id (refused or unanswered, and it ran)`);
    extraJobs.add(id);
  }
  for (const [key, ids] of ledger.idsByKey) {
    if (ids.size < 2) continue;
    kinds.push(`key ${key}: answered with ${ids.size} job ids`);
    for (const id of [...ids].slice(1)) extraJobs.add(id);
  }
  // Extra runs of one job: stored again after it ended, or completed twice.
  let extraRuns = 0;
  for (const [id, n] of scope.stored) {
    if (n < 2) continue;
    kinds.push(`${id}: stored ${n} times`);
    extraRuns += n - 1;
  }
  for (const [id, n] of scope.completed) {
    if (n < 2) continue;
    kinds.push(`${id}: completed ${n} times`);
    extraRuns += n - 1;
  }
  if (kinds.length > 0) say(`  ${fault}: duplicates: ${kinds.slice(0, 5).join("; ")}`);
  const row: Row = {
    fault,
    submitted: ledger.submitted,
    accepted: ledger.accepted.size,
    completed,
    failed,
    lost,
    duplicated: extraJobs.size + extraRuns,
    checks: [],
    notes: [],
  };
  // The witness must have seen what the clients saw, or its silence proves nothing.
  const storedSeen = [...ledger.accepted.keys()].filter((id) => scope.stored.has(id)).length;
  row.checks.push({
    name: `Redis MONITOR saw every accepted job stored (${storedSeen}/${ledger.accepted.size})`,
    ok: storedSeen === ledger.accepted.size && ledger.accepted.size > 0,
  });
  const completedSeen = completedIds.filter((id) => (scope.completed.get(id) ?? 0) >= 1).length;
  row.checks.push({
    name: `Redis MONITOR saw every completed job complete (${completedSeen}/${completedIds.length})`,
    ok: completedSeen === completedIds.length,
  });
  if (scope.unseen.stored + scope.unseen.completed > 0)
    row.notes.push(
      `${scope.unseen.stored} store(s) and ${scope.unseen.completed} completion(s) ran in Redis's last instant before its SIGKILL (MONITOR line never sent) and were read back from the restarted Redis`,
    );
  // Citadel's own record, compared with Redis's.
  const audit = await auditCompletions(redis, scope.prefix);
  const missingAudit = completedIds.filter((id) => !audit.has(id)).length;
  if (missingAudit > 0)
    row.notes.push(`${missingAudit} completed job(s) have no job.completed record in the audit stream`);
  const auditTwice = [...audit].filter(([id, n]) => n > 1 && (scope.completed.get(id) ?? 0) < n);
  if (auditTwice.length > 0)
    row.notes.push(
      `${auditTwice.length} job(s) have more job.completed audit records than Redis executed completions (e.g. ${auditTwice[0]?.[0]}: ${auditTwice[0]?.[1]} records): the audit stream repeated a record`,
    );
  if (Object.keys(ledger.refused).length > 0) row.notes.push(`refused at submit: ${fmtCodes(ledger.refused)}`);
  if (ledger.retried > 0)
    row.notes.push(`${ledger.retried} send(s) repeated with the same Idempotency-Key after a network error or a 5xx`);
  return row;
}

/** Picks the logical request out of a stored job's data: the base64 input tensor it carries. */
/** A job's stored input bytes (one input: the scenario's tensor) → its logical request, by the tensor's base64. */
function inputLookup(byInput: Map<string, string>): LogicalOf {
  return (inputs) => byInput.get(inputs.toString("base64"));
}

// ---------------------------------------------------------------------------------
// fleet helpers
// ---------------------------------------------------------------------------------

interface Fleet {
  setup: FleetSetup;
  api: Proc;
  apiPort: number;
  workers: Proc[];
  client: Client;
  /** What Redis executes for this fleet's prefix and models. */
  scope: WitnessScope;
  startWorker(extra?: Record<string, string>): Promise<Proc>;
  restartApi(): Promise<void>;
  close(): Promise<void>;
}

async function startFleet(
  env: ScenarioEnv,
  name: string,
  opts: {
    workers: number;
    workerEnv?: Record<string, string>;
    apiEnv?: Record<string, string>;
    fleetEnv?: Record<string, string>;
    publish?: (s: FleetSetup) => Promise<void>;
    setup?: FleetSetup;
    /** The model queues the witness watches. */
    models: string[];
    /** Names a stored job's logical request from its data (for per-request counts). */
    logicalOf?: LogicalOf;
  },
): Promise<Fleet> {
  const setup =
    opts.setup ??
    (await setupFleet({
      redisUrl: env.redis.url,
      prefix: `{rel-${name}-${randomBytes(3).toString("hex")}}`,
      ...(opts.fleetEnv ? { env: opts.fleetEnv } : {}),
    }));
  const scope = env.witness.scope(setup.prefix, opts.models, opts.logicalOf);
  await opts.publish?.(setup);
  const apiPort = await freePort();
  const aEnv = apiEnv(setup.env, apiPort, { JOB_BACKOFF_MS: "200", ...opts.apiEnv });
  let api = await startProc("api", `${name}-api`, aEnv, setup.logDir, apiPort);
  const workers: Proc[] = [];
  let n = 0;
  const startWorker = async (extra: Record<string, string> = {}) => {
    const port = await freePort();
    n++;
    const w = await startProc(
      "worker",
      `${name}-worker-${n}`,
      workerEnv(setup.env, port, `${name}-w${n}`, {
        LOCK_DURATION_MS: "3000",
        SHUTDOWN_TIMEOUT_MS: "3000",
        ...opts.workerEnv,
        ...extra,
      }),
      setup.logDir,
      port,
    );
    workers.push(w);
    return w;
  };
  for (let i = 0; i < opts.workers; i++) await startWorker();
  const fleet: Fleet = {
    setup,
    get api() {
      return api;
    },
    apiPort,
    workers,
    client: new Client(api.url, setup.apiKey),
    scope,
    startWorker,
    restartApi: async () => {
      api = await startProc("api", `${name}-api`, aEnv, setup.logDir, apiPort);
    },
    close: async () => {
      scope.close();
      await Promise.all([...workers.map((w) => w.stop()), api.stop()]);
      await dropPrefix(setup.redis, setup.prefix).catch(() => undefined);
      await setup.close();
    },
  };
  return fleet;
}

/** Deletes a fleet's keys from the scenario's Redis (one key at a time: on a cluster they may lie in many slots). */
export async function dropPrefix(redis: RedisConn, prefix: string): Promise<void> {
  const found = await scanKeys(redis, deploymentKeyPattern(prefix));
  for (let i = 0; i < found.length; i += 1000) await Promise.all(found.slice(i, i + 1000).map((k) => redis.unlink(k)));
}

function jobBody(model: string, dims: number[], data: string): string {
  return JSON.stringify({ model, inputs: { x: { dtype: "float32", shape: [1, ...dims], data } } });
}

// ---------------------------------------------------------------------------------
// 1. worker SIGKILLed mid-batch, repeatedly, under load
// ---------------------------------------------------------------------------------

export async function workerKills(env: ScenarioEnv): Promise<Row> {
  const model = buildHeavyConvNet();
  const dims = [3, 64, 64];
  const poolSize = 32;
  const inputs = Array.from({ length: poolSize }, (_, i) => randomInput(3 * 64 * 64, 500 + i));
  const fleet = await startFleet(env, "kill", {
    workers: 2,
    models: ["heavy"],
    publish: (s) =>
      s.publish(model, {
        name: "heavy",
        version: "1",
        spec: {
          maxBatch: 8,
          maxQueueDelayMs: 2,
          timeoutMs: 10_000,
          executionProviders: ["cpu"],
          inputs: { x: { range: [-10, 10] } },
        },
      }),
  });
  const ledger = new Ledger();
  const bodies = inputs.map((x) => jobBody("heavy", dims, b64(x)));
  const total = env.short ? 300 : 3000;
  const kills = env.short ? 3 : 12;
  const checks: Row["checks"] = [];
  let killedHolding = 0;
  let killedJobsHeld = 0;
  let killsDone = false;
  try {
    // Load: a steady stream of submissions, at least `total`, and on until the kills are done.
    let next = 0;
    const submitDone = (async () => {
      const interval = (env.short ? 10_000 : 60_000) / total;
      const t0 = Date.now();
      const pending: Promise<void>[] = [];
      while (next < total || !killsDone) {
        const i = next++;
        const due = t0 + i * interval;
        if (due > Date.now()) await sleep(due - Date.now());
        ledger.submitted++;
        const key = `kill-${i}`;
        pending.push(
          keyed(ledger, () => fleet.client.submit(bodies[i % poolSize] ?? "", key)).then((r) =>
            r?.id
              ? ledger.accept({ id: r.id, input: i % poolSize, key })
              : ledger.refuse(r?.code ?? (r ? `HTTP_${r.status}` : "NETWORK")),
          ),
        );
      }
      await Promise.all(pending);
    })();
    // Faults: SIGKILL a worker while it holds jobs, then start a replacement.
    const base = qualifiedQueueName(fleet.setup.prefix, "heavy");
    for (let k = 0; k < kills; k++) {
      const victim = fleet.workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null)[k % 2];
      if (!victim) break;
      // Wait until the victim holds at least one locked job (the load keeps coming until the
      // kills are done): then the kill lands mid-batch. Bounded, and counted either way.
      let held = 0;
      await holdsWithin(async () => {
        const active = await fleet.setup.redis.lrange(`${base}:active`, 0, -1);
        const locks = active.length ? await fleet.setup.redis.mget(...active.map((id) => `${base}:${id}:lock`)) : [];
        held = locks.filter((l) => l?.startsWith(`kill-w${victim.name.split("-").pop()}:`)).length;
        return held > 0;
      }, 60_000);
      victim.child.kill("SIGKILL");
      await victim.exited;
      if (held > 0) {
        killedHolding++;
        killedJobsHeld += held;
      }
      fleet.workers.splice(fleet.workers.indexOf(victim), 1);
      await fleet.startWorker();
      await sleep(env.short ? 1500 : 3000); // pacing between faults, not a wait for an outcome
    }
    killsDone = true;
    await submitDone;
    await waitIdle(fleet.setup.redis, fleet.setup.prefix, ["heavy"]);
    const views = await drain(fleet.client, [...ledger.accepted.keys()], 90_000);
    const row = await account("worker SIGKILL mid-batch", ledger, views, fleet.scope, fleet.setup.redis);
    checks.push({
      name: `${kills} SIGKILLs, ${killedHolding} while the worker held locked jobs (${killedJobsHeld} jobs in flight)`,
      ok: killedHolding === kills,
    });
    // Results unchanged: every output against a direct onnxruntime run of the same input.
    const session = await ort.InferenceSession.create(model, { executionProviders: ["cpu"], intraOpNumThreads: 1 });
    const want: Float32Array[] = [];
    for (const x of inputs) {
      const out = await session.run({ x: new ort.Tensor("float32", x, [1, ...dims]) });
      want.push((out[session.outputNames[0] ?? ""]?.data as Float32Array) ?? new Float32Array());
    }
    await session.release();
    let maxDiff = 0;
    let compared = 0;
    for (const [id, a] of ledger.accepted) {
      const v = views.get(id);
      const t = v?.result?.outputs[session.outputNames[0] ?? ""];
      if (!t) continue;
      const got = decodeF32(t.data);
      const exp = want[a.input] ?? new Float32Array();
      for (let k = 0; k < exp.length; k++)
        maxDiff = Math.max(maxDiff, Math.abs((exp[k] ?? 0) - (got[k] ?? Number.NaN)));
      compared++;
    }
    checks.push({
      name: `outputs equal a direct onnxruntime run (${compared} compared)`,
      ok: compared === row.completed && maxDiff <= 1e-4,
      detail: `max |diff| ${maxDiff.toExponential(2)}`,
    });
    checks.push({ name: "every accepted job completed", ok: row.completed === row.accepted });
    row.checks.push(...checks);
    return row;
  } finally {
    killsDone = true;
    await fleet.close();
  }
}

// ---------------------------------------------------------------------------------
// 2. Redis restarted (crash, AOF)
// ---------------------------------------------------------------------------------

export async function redisRestart(env: ScenarioEnv): Promise<Row> {
  const dims = [3, 32, 32];
  // Each logical request carries an input of its own: the witness finds it in the job's data.
  const byInput = new Map<string, string>();
  const inputOf = (i: number) => {
    const data = b64(randomInput(3 * 32 * 32, 900 + i));
    byInput.set(data, `redis-${i}`);
    return data;
  };
  const fleet = await startFleet(env, "redis", {
    workers: 1,
    models: ["conv"],
    logicalOf: inputLookup(byInput),
    publish: (s) =>
      s.publish(buildConvNet(), {
        name: "conv",
        version: "1",
        spec: { maxBatch: 16, maxQueueDelayMs: 2, executionProviders: ["cpu"], inputs: { x: { range: [-10, 10] } } },
      }),
  });
  const ledger = new Ledger();
  const row0Checks: Row["checks"] = [];
  const statusesWhileDown: Record<string, number> = {};
  let down = false;
  let stop = false;
  try {
    // Clients: submit with an idempotency key; on a network error or 5xx retry the same key.
    let seq = 0;
    const client = async () => {
      while (!stop) {
        const i = seq++;
        const key = `redis-${i}`;
        const body = jobBody("conv", dims, inputOf(i));
        ledger.submitted++;
        for (let attempt = 0; attempt < 200 && !stop; attempt++) {
          let r: { status: number; id?: string; code?: string };
          const downAtStart = down;
          try {
            r = await fleet.client.submit(body, key);
          } catch {
            r = { status: 0, code: "NETWORK" };
          }
          if (downAtStart && down) statusesWhileDown[String(r.status)] = (statusesWhileDown[String(r.status)] ?? 0) + 1;
          if (r.status === 202 && r.id) {
            ledger.accept({ id: r.id, input: -1, key });
            break;
          }
          if (r.status >= 400 && r.status < 500) {
            ledger.refuse(r.code ?? `HTTP_${r.status}`);
            break;
          }
          await sleep(100);
        }
        await sleep(env.short ? 10 : 5);
      }
    };
    const clients = Array.from({ length: 4 }, client);
    // The fault lands under load: once a first batch of jobs was accepted (not after a fixed time).
    const before = env.short ? 100 : 400;
    await waitUntil(() => ledger.accepted.size >= before, `${before} jobs accepted before the fault`, 120_000);
    say("  redis: SIGKILL");
    await env.redis.stop("SIGKILL");
    down = true;
    let ready = 0;
    await holdsWithin(async () => {
      ready = await fetch(`${fleet.api.url}/readyz`).then(
        (r) => r.status,
        () => 0,
      );
      return ready === 503;
    }, 30_000);
    const probe = await fleet.client
      .submit(jobBody("conv", dims, b64(randomInput(3072, 1))), "probe-while-down")
      .catch(() => ({
        status: 0,
        code: "NETWORK",
      }));
    // Down long enough that the clients' requests meet the outage (counted, not timed).
    const downAnswers = () => Object.values(statusesWhileDown).reduce((a, b) => a + b, 0);
    await holdsWithin(() => downAnswers() >= 20, 60_000);
    say("  redis: restart");
    down = false;
    await env.redis.start();
    const atRestart = ledger.accepted.size;
    const after0 = env.short ? 100 : 400;
    await holdsWithin(() => ledger.accepted.size >= atRestart + after0, 120_000);
    stop = true;
    await Promise.all(clients);
    row0Checks.push({
      name: "clients were accepted again after the restart",
      ok: ledger.accepted.size >= atRestart + after0,
      detail: `${ledger.accepted.size - atRestart} accepted after it`,
    });
    row0Checks.push({ name: "readyz answers 503 while Redis is down", ok: ready === 503, detail: `got ${ready}` });
    row0Checks.push({
      name: "POST /v1/jobs answers 503 while Redis is down",
      ok: probe.status === 503,
      detail: `got ${probe.status} ${probe.code ?? ""}`,
    });
    const other = Object.entries(statusesWhileDown).filter(([s]) => s !== "503");
    row0Checks.push({
      name: "every request made and answered while Redis was down got 503 (at least 20 were)",
      ok: other.length === 0 && downAnswers() >= 20,
      detail: JSON.stringify(statusesWhileDown),
    });
    // Recovery: a fresh submission completes (bounded: a hang here must fail, not stall).
    say("  redis: recovery probe");
    const after = await fleet.client.submit(jobBody("conv", dims, b64(randomInput(3072, 2))));
    const afterView = after.id
      ? await Promise.race([fleet.client.waitFinal(after.id, 5_000), sleep(30_000).then(() => null)])
      : null;
    row0Checks.push({
      name: "a job submitted after the restart completes",
      ok: afterView?.status === "completed",
      detail: `${after.status} ${afterView?.status ?? ""}`,
    });
    if (after.id) ledger.accept({ id: after.id, input: 1 });
    ledger.submitted++;
    say("  redis: waiting for the queue to drain");
    await waitIdle(fleet.setup.redis, fleet.setup.prefix, ["conv"]);
    say("  redis: collecting results");
    const views = await drain(fleet.client, [...ledger.accepted.keys()], 60_000);
    const row = await account("Redis SIGKILL + restart (AOF)", ledger, views, fleet.scope, fleet.setup.redis);
    row.checks.push(...row0Checks);
    row.checks.push({ name: "every accepted job completed", ok: row.completed === row.accepted });
    return row;
  } finally {
    stop = true;
    if (!env.redis.running) await env.redis.start();
    say("  redis: stopping the fleet");
    await fleet.close();
  }
}

// ---------------------------------------------------------------------------------
// 3. Vault down or sealed
// ---------------------------------------------------------------------------------

export async function vaultDown(env: ScenarioEnv): Promise<Row> {
  const vault = await startVaultTestServer({ policyDir: POLICY_DIR });
  const root = vault.rootToken;
  const call = async (method: string, p: string, body?: object) => {
    const r = await fetch(`${vault.addr}/v1/${p}`, {
      method,
      headers: { "x-vault-token": root, "content-type": "application/json" },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    if (r.status >= 300) throw new Error(`vault ${method} ${p}: ${r.status} ${await r.text()}`);
  };
  await call("POST", "transit/keys/citadel-models", { type: "aes256-gcm96" });
  await call("POST", "transit/keys/citadel-signing", { type: "ed25519" });
  const publisherToken = vault.createToken(["citadel-publisher"]);
  const workerToken = vault.createToken(["citadel-worker"]);
  const vaultEnv = { KEY_PROVIDER: "vault", VAULT_ADDR: vault.addr, VAULT_AUTH: "token" };
  const setup = await setupFleet({
    redisUrl: env.redis.url,
    prefix: `{rel-vault-${randomBytes(3).toString("hex")}}`,
    env: { ...vaultEnv, VAULT_TOKEN: publisherToken },
  });
  const signers = path.join(setup.dir, "trusted-signers.json");
  writeFileSync(signers, JSON.stringify(await (await setup.ctx.keys()).publicKeys()), { mode: 0o600 });
  const dims = [3, 32, 32];
  const spec = {
    maxBatch: 16,
    maxQueueDelayMs: 2,
    executionProviders: ["cpu" as const],
    inputs: { x: { range: [-10, 10] as [number, number] } },
  };
  await setup.publish(buildConvNet(), { name: "conv", version: "1", spec });
  await setup.publish(buildConvNet({ seed: 11 }), { name: "conv-b", version: "1", spec });
  const fleet = await startFleet(env, "vault", {
    setup,
    workers: 1,
    models: ["conv", "conv-b"],
    apiEnv: { TRUSTED_SIGNERS: signers },
    workerEnv: { VAULT_TOKEN: workerToken, TRUSTED_SIGNERS: signers },
  });
  const ledger = new Ledger();
  const pool = Array.from({ length: 8 }, (_, i) => b64(randomInput(3 * 32 * 32, 70 + i)));
  const n = env.short ? 40 : 200;
  const submitMany = async (model: string, count: number): Promise<string[]> => {
    const ids: string[] = [];
    await Promise.all(
      Array.from({ length: count }, async (_, i) => {
        ledger.submitted++;
        const key = `vault-${ledger.submitted}`;
        const r = await keyed(ledger, () =>
          fleet.client.submit(jobBody(model, dims, pool[i % pool.length] ?? ""), key),
        );
        if (r?.id) {
          ledger.accept({ id: r.id, input: -1, key });
          ids.push(r.id);
        } else ledger.refuse(r?.code ?? (r ? `HTTP_${r.status}` : "NETWORK"));
      }),
    );
    return ids;
  };
  const finals = async (ids: string[]) => {
    const views = await Promise.all(ids.map((id) => fleet.client.waitFinal(id, 20_000)));
    const by: Record<string, number> = {};
    for (const v of views) {
      const k = v.status === "completed" ? "completed" : (v.error?.code ?? v.status);
      by[k] = (by[k] ?? 0) + 1;
    }
    return by;
  };
  try {
    const warm = await finals(await submitMany("conv", n));
    const checks: Row["checks"] = [];
    checks.push({ name: "Vault up: conv serves", ok: warm.completed === n, detail: JSON.stringify(warm) });
    for (const mode of ["down", "sealed"] as const) {
      if (mode === "down") await vault.setDown("refuse");
      else vault.setSealed(true);
      const loaded = await finals(await submitMany("conv", n));
      checks.push({
        name: `Vault ${mode}: the loaded model keeps serving`,
        ok: loaded.completed === n,
        detail: JSON.stringify(loaded),
      });
      const needs = await finals(await submitMany("conv-b", env.short ? 4 : 20));
      checks.push({
        name: `Vault ${mode}: a load that needs Vault fails VAULT_UNAVAILABLE`,
        ok: (needs.VAULT_UNAVAILABLE ?? 0) === (env.short ? 4 : 20),
        detail: JSON.stringify(needs),
      });
      if (mode === "down") await vault.setDown(false);
      else vault.setSealed(false);
    }
    const back = await finals(await submitMany("conv-b", env.short ? 8 : 40));
    checks.push({
      name: "Vault back: the same load succeeds",
      ok: back.completed === (env.short ? 8 : 40),
      detail: JSON.stringify(back),
    });
    const views = await drain(fleet.client, [...ledger.accepted.keys()], 30_000);
    const row = await account("Vault down, then sealed", ledger, views, fleet.scope, setup.redis);
    row.checks.push(...checks);
    row.notes.push(
      "the VAULT_UNAVAILABLE failures are the expected outcome for jobs whose model needed Vault while it was away",
    );
    return row;
  } finally {
    await fleet.close();
    await vault.stop();
  }
}

// ---------------------------------------------------------------------------------
// 4. API restarted during a bulk submit (idempotency keys)
// ---------------------------------------------------------------------------------

/**
 * Bulk submits with idempotency keys while the API is SIGKILLed. Each kill lands while a
 * request is provably mid-flight: the witness sees Redis execute one of its key claims
 * while the client still waits, the harness pauses Redis writes (CLIENT PAUSE WRITE: the
 * API cannot finish that request's enqueue), reads how far the request got, kills the
 * API, and lets Redis go. A kill whose request was answered anyway is not counted and
 * another one follows (bounded). Then: every killed request was retried with its key,
 * and Redis stored exactly one job per logical request.
 */
export async function apiRestart(env: ScenarioEnv): Promise<Row> {
  const per = 100;
  const restarts = env.short ? 2 : 5;
  const minRequests = env.short ? 20 : 200;
  const maxRequests = env.short ? 400 : 2000;
  const byInput = new Map<string, string>();
  /** The API's Redis key for each item's idempotency claim → the bulk request it belongs to. */
  const claimOf = new Map<string, number>();
  const fleet = await startFleet(env, "apirestart", {
    workers: 1,
    models: ["tiny"],
    logicalOf: inputLookup(byInput),
    publish: (s) =>
      s.publish(buildIdentityModel("float32", ["N", 16]), {
        name: "tiny",
        version: "1",
        spec: { maxBatch: 64, maxQueueDelayMs: 2, executionProviders: ["cpu"], inputs: { x: { range: [-1, 1] } } },
      }),
  });
  const claimKey = (key: string) =>
    keys.idempotency(fleet.setup.prefix, "bench", createHash("sha256").update(key).digest("hex"));
  const bodyOf = (r: number) =>
    JSON.stringify({
      jobs: Array.from({ length: per }, (_, i) => {
        const data = b64(randomInput(16, r * per + i));
        byInput.set(data, `bulk-${r}#${i}`);
        claimOf.set(claimKey(`bulk-${r}#${i}`), r);
        return { model: "tiny", inputs: { x: { dtype: "float32", shape: [1, 16], data } } };
      }),
    });
  const ledger = new Ledger();
  const checks: Row["checks"] = [];
  const admin = env.witness.admin();
  let retried = 0;
  let sent = 0;
  let killing = true;
  /** Attempts awaiting an answer, by request: resolves "answered" or "no answer". */
  const inflight = new Map<number, Promise<"answered" | "no answer">>();
  const retriedRequests = new Set<number>();
  try {
    const sender = async () => {
      for (;;) {
        const r = sent;
        if (r >= maxRequests || (!killing && r >= minRequests)) return;
        sent++;
        const key = `bulk-${r}`;
        const body = bodyOf(r);
        ledger.submitted += per;
        for (let attempt = 0; ; attempt++) {
          if (attempt > 0) {
            retried++;
            retriedRequests.add(r);
          }
          const call = fleet.client.bulk(body, key).then(
            (res) => res,
            () => null,
          );
          inflight.set(
            r,
            call.then((res) => (res ? "answered" : "no answer")),
          );
          const res = await call;
          inflight.delete(r);
          if (res && res.status === 202) {
            res.results.forEach((j, i) => {
              if (j.id) ledger.accept({ id: j.id, input: -1, key: `${key}#${i}` });
              else ledger.refuse(j.error?.code ?? "UNKNOWN");
            });
            break;
          }
          if (attempt > 300) {
            ledger.refuse("GAVE_UP");
            break;
          }
          await sleep(100);
        }
      }
    };
    const senders = Array.from({ length: 4 }, sender);
    const logicalOf = inputLookup(byInput);
    /**
     * Resolves with a request its client still waits on, as soon as Redis executes one of
     * its key claims (`claim`) or stores one of its jobs (`store`).
     */
    const nextStep = (step: "claim" | "store") =>
      new Promise<number>((resolve, reject) => {
        const timer = setTimeout(() => {
          stop();
          reject(new Error(`no bulk request reached its ${step} step within 60 s`));
        }, 60_000);
        const stop = env.witness.watch((c) => {
          const cmd = c.args[0]?.toLowerCase();
          let r: number | undefined;
          // The claim's key is the first key of whatever command touches it (a script's EVAL, or a command in it).
          if (step === "claim") r = claimOf.get(c.args[1] ?? "") ?? claimOf.get(c.args[3] ?? "");
          // Its jobs are being stored: their input bytes are written first, then the jobs.
          if (step === "store" && c.source !== "lua" && cmd === "set" && c.args[1]?.endsWith(":in")) {
            const logical = logicalOf(monitorBytes(c.args[2] ?? ""));
            r = logical ? Number(/^bulk-(\d+)#/.exec(logical)?.[1]) : undefined;
          }
          if (r === undefined || !inflight.has(r)) return;
          stop();
          clearTimeout(timer);
          resolve(r);
        });
      });
    const landed: string[] = [];
    const killed = new Set<number>();
    let kills = 0;
    while (landed.length < restarts && kills < restarts * 10) {
      // Alternate: cut a request off after its keys are claimed, or once its jobs are being stored.
      const r = await nextStep(landed.length % 2 === 0 ? "claim" : "store");
      const answer = inflight.get(r);
      // No write runs past this point until the API is dead: its request cannot complete.
      await admin.call("CLIENT", "PAUSE", "30000", "WRITE");
      let claimed = 0;
      let stored = 0;
      try {
        const claims = await Promise.all(
          Array.from({ length: per }, (_, i) => admin.hget(claimKey(`bulk-${r}#${i}`), "id")),
        );
        const ids = claims.flatMap((id) => (id ? [id] : []));
        claimed = ids.length;
        const q = qualifiedQueueName(fleet.setup.prefix, "tiny");
        stored = ids.length ? await admin.exists(...ids.map((id) => `${q}:${id}`)) : 0;
        say(`  api: SIGKILL while request ${r} is in flight (${claimed}/${per} keys claimed, ${stored} jobs stored)`);
        fleet.api.child.kill("SIGKILL");
        await fleet.api.exited;
      } finally {
        await admin.call("CLIENT", "UNPAUSE");
      }
      kills++;
      if ((await answer) === "no answer") {
        landed.push(`${claimed}/${per} claimed, ${stored} stored`);
        killed.add(r);
      }
      await fleet.restartApi();
    }
    killing = false;
    await Promise.all(senders);
    await waitIdle(fleet.setup.redis, fleet.setup.prefix, ["tiny"]);
    const views = await drain(fleet.client, [...ledger.accepted.keys()], 60_000);
    const row = await account("API SIGKILL during bulk submit", ledger, views, fleet.scope, fleet.setup.redis);
    checks.push({
      name: `${landed.length} of ${kills} API SIGKILLs landed while a bulk request was mid-flight, unanswered`,
      ok: landed.length === restarts,
      detail: landed.join("; "),
    });
    const notRetried = [...killed].filter((r) => !retriedRequests.has(r));
    checks.push({
      name: `every request cut off by a kill was retried with its idempotency key (${retried} retries in all)`,
      ok: killed.size > 0 && notRetried.length === 0,
      detail: `${killed.size} cut off${notRetried.length ? `; not retried: ${notRetried.join(", ")}` : ""}`,
    });
    const keys = sent * per;
    const oneJob = [...Array(sent).keys()]
      .flatMap((r) => Array.from({ length: per }, (_, i) => `bulk-${r}#${i}`))
      .filter((k) => fleet.scope.idsByLogical.get(k)?.size === 1 && ledger.idsByKey.get(k)?.size === 1);
    checks.push({
      name: "one job per idempotency key, in Redis and in the answers (no second job, none missing)",
      ok: oneJob.length === keys,
      detail: `${oneJob.length}/${keys} keys`,
    });
    checks.push({ name: "every accepted job completed", ok: row.completed === row.accepted });
    row.checks.push(...checks);
    return row;
  } finally {
    killing = false;
    admin.disconnect();
    await fleet.close();
  }
}

// ---------------------------------------------------------------------------------
// 5. soak: many jobs, memory and queue depth sampled
// ---------------------------------------------------------------------------------

export interface SoakSample {
  t: number;
  done: number;
  depth: number;
  workerRssMb: number[];
  apiRssMb: number;
  redisMb: number;
}

export async function soak(
  env: ScenarioEnv,
  total: number,
  onSample?: (s: SoakSample) => void,
): Promise<Row & { samples: SoakSample[] }> {
  const fleet = await startFleet(env, "soak", {
    workers: 2,
    models: ["tiny"],
    publish: (s) =>
      s.publish(buildIdentityModel("float32", ["N", 16]), {
        name: "tiny",
        version: "1",
        spec: { maxBatch: 64, maxQueueDelayMs: 2, executionProviders: ["cpu"], inputs: { x: { range: [-1, 1] } } },
      }),
    // Results are kept for 2 minutes so Redis holds a bounded window, not 100,000 results.
    apiEnv: { RESULT_TTL_MS: "120000" },
  });
  const ledger = new Ledger();
  const per = 200;
  const samples: SoakSample[] = [];
  const base = qualifiedQueueName(fleet.setup.prefix, "tiny");
  const redis = fleet.setup.redis;
  let completedCount = 0;
  /** Jobs waiting for a worker: high ones in the wait list, normal and low ones in the prioritized set. */
  const queued = async () => {
    const [w, p] = await Promise.all([redis.llen(`${base}:wait`), redis.zcard(`${base}:prioritized`)]);
    return w + p;
  };
  try {
    const body = JSON.stringify({
      jobs: Array.from({ length: per }, (_, i) => ({
        model: "tiny",
        inputs: { x: { dtype: "float32", shape: [1, 16], data: b64(randomInput(16, i)) } },
      })),
    });
    const t0 = Date.now();
    let sent = 0;
    let stop = false;
    const sampler = (async () => {
      while (!stop) {
        const [depth, info] = await Promise.all([queued(), redis.info("memory")]);
        const s: SoakSample = {
          t: Math.round((Date.now() - t0) / 1000),
          done: completedCount,
          depth,
          workerRssMb: fleet.workers.map((w) => Math.round(rssOf(w.pid) / 2 ** 20)),
          apiRssMb: Math.round(rssOf(fleet.api.pid) / 2 ** 20),
          redisMb: Math.round(Number(/used_memory:(\d+)/.exec(info)?.[1] ?? 0) / 2 ** 20),
        };
        samples.push(s);
        onSample?.(s);
        await sleep(env.short ? 1000 : 5000);
      }
    })();
    // Producer: bulk submits, keeping the backlog bounded (like a well-behaved upstream).
    const producer = async () => {
      while (sent < total) {
        const depth = await queued();
        if (depth > 4000) {
          await sleep(50);
          continue;
        }
        if (sent >= total) break;
        const key = `soak-${sent / per}`;
        sent += per;
        ledger.submitted += per;
        const r = await keyed(ledger, () => fleet.client.bulk(body, key));
        if (r?.status !== 202) {
          ledger.refuse(r?.code ?? (r ? `HTTP_${r.status}` : "NETWORK"));
          continue;
        }
        r.results.forEach((j, i) => {
          if (j.id) ledger.accept({ id: j.id, input: -1, key: `${key}#${i}` });
          else ledger.refuse(j.error?.code ?? "UNKNOWN");
        });
      }
    };
    const counter = (async () => {
      while (!stop) {
        // Settled so far = accepted minus what is still waiting or active (the completed
        // set itself shrinks once BullMQ starts removing results older than RESULT_TTL).
        const [w, a] = await Promise.all([queued(), redis.llen(`${base}:active`)]).catch(() => [0, 0]);
        completedCount = Math.max(completedCount, ledger.accepted.size - (w ?? 0) - (a ?? 0));
        await sleep(500);
      }
    })();
    await Promise.all([producer(), producer()]);
    // Drain: wait until nothing is waiting or active.
    const end = Date.now() + 120_000;
    while (Date.now() < end) {
      const [w, a] = await Promise.all([queued(), redis.llen(`${base}:active`)]);
      if (w + a === 0) break;
      await sleep(500);
    }
    stop = true;
    await Promise.all([sampler, counter]);
    // Final states straight from BullMQ (100,000 long-polls would measure the client, not Citadel).
    const views = new Map<string, ResultView>();
    const ids = [...ledger.accepted.keys()];
    const completedSet = new Set(await redis.zrange(`${base}:completed`, 0, -1));
    const failedIds = await redis.zrange(`${base}:failed`, 0, -1);
    for (const id of ids) if (completedSet.has(id)) views.set(id, { id, status: "completed" });
    for (const id of failedIds) {
      const reason = (await redis.hget(`${base}:${id}`, "failedReason")) ?? "";
      views.set(id, {
        id,
        status: "failed",
        error: { code: /^([A-Z_]+):/.exec(reason)?.[1] ?? "INTERNAL", message: reason },
      });
    }
    // Completed jobs older than RESULT_TTL are removed by BullMQ: Redis's own feed saw them complete.
    let fromFeed = 0;
    for (const id of ids)
      if (!views.has(id) && fleet.scope.completed.has(id)) {
        views.set(id, { id, status: "completed" });
        fromFeed++;
      }
    const row = await account(`soak (${total.toLocaleString("en")} jobs)`, ledger, views, fleet.scope, redis);
    if (fromFeed > 0)
      row.notes.push(`${fromFeed} completed job(s) were already removed (RESULT_TTL); counted from MONITOR`);
    const steady = samples.filter((s) => s.done >= total * 0.1);
    const first = steady[0];
    const last = samples[samples.length - 1];
    if (first && last) {
      const growth = first.workerRssMb.map((r0, k) => ((last.workerRssMb[k] ?? r0) - r0) / Math.max(1, r0));
      const maxGrowth = Math.max(...growth);
      // The 5% target is for the full soak (100,000 jobs); a short soak is still warming
      // its heap, so it only guards against growth without bound.
      const bound = env.short ? 0.25 : 0.05;
      row.checks.push({
        name: `worker RSS growth after warm-up (10% of jobs) under ${bound * 100}%`,
        ok: maxGrowth < bound,
        detail: `${first.workerRssMb.join("/")} MB → ${last.workerRssMb.join("/")} MB (${(maxGrowth * 100).toFixed(1)}%)`,
      });
      row.checks.push({
        name: "queue depth bounded",
        ok: Math.max(...samples.map((s) => s.depth)) <= 4000 + 2 * per,
        detail: `max ${Math.max(...samples.map((s) => s.depth))}`,
      });
      row.notes.push(
        `API RSS ${first.apiRssMb} → ${last.apiRssMb} MB; Redis used_memory ${first.redisMb} → ${last.redisMb} MB; ${Math.round(total / Math.max(1, last.t))} jobs/s`,
      );
    }
    row.checks.push({ name: "every accepted job completed", ok: row.completed === row.accepted });
    return { ...row, samples };
  } finally {
    await fleet.close();
  }
}
