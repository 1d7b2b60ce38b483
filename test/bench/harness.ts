/**
 * Shared harness for the benchmark and the reliability suite: a private Redis, the
 * API and workers as real child processes, models sealed and published, a tenant,
 * an HTTP client, and the measurements both need (percentiles, commandstats, RSS).
 * Everything listens on 127.0.0.1 only.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { type CliContext, loadCliEnv, openContext } from "@citadel/cli/context";
import { type AppForm, type FleetProcess, freePort, startProcess } from "@citadel/cli/fleet";
import { publishSealed, type SealRequest, sealBytes } from "@citadel/cli/models";
import { initKeyring } from "@citadel/keys";
import { mulberry32 } from "@citadel/onnx";
import { isClusterTarget, type RedisConn, redisClient } from "@citadel/queue";
import { type TenantInput, TenantStore } from "@citadel/tenants";
import { Redis } from "ioredis";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function say(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

export { freePort };

/**
 * A busy core: a child process that runs `turn` over and over (after `setup`) until
 * killed, or until this process is gone: it looks at its parent between turns, so a
 * bench killed mid-measurement leaves nothing spinning behind it.
 */
export function spawnBusyLoop(setup: string, turn: string): ChildProcess {
  const source = `const parent = ${process.pid}; ${setup}; for (;;) { ${turn}; if (process.ppid !== parent) process.exit(0); }`;
  return spawn(process.execPath, ["-e", source], { stdio: "ignore" });
}

/** Integer arithmetic and nothing else (no memory traffic): what is left is the core's clock and what cores share. */
export const SPINNING = { setup: "let x = 0", turn: "for (let i = 0; i < 1e7; i++) x = (x * 31 + i) | 0" } as const;

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

export function mean(xs: readonly number[]): number {
  return xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length;
}

// ---------------------------------------------------------------------------------
// Redis of our own
// ---------------------------------------------------------------------------------

export interface OwnRedis {
  url: string;
  port: number;
  dir: string;
  /** A unix socket only the harness uses: it answers before the TCP port opens. */
  socket: string;
  /** SIGKILL (AOF keeps what was fsynced) or SHUTDOWN-like SIGTERM. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port and data directory. */
  start(): Promise<void>;
  /** Stops it for good and removes its data directory when it made one (its AOF holds test data). */
  close(): Promise<void>;
  /**
   * Runs `hook` at every (re)start once the data is loaded but before the TCP port opens,
   * so it sees every command any other client runs (e.g. a MONITOR attaching).
   */
  beforeListen(hook: () => Promise<void>): void;
  readonly running: boolean;
}

export function haveRedisServer(): boolean {
  return spawnSync("redis-server", ["--version"], { stdio: "ignore" }).status === 0;
}

async function pingRedis(target: string | { path: string }): Promise<boolean> {
  const opts = { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null };
  const r = typeof target === "string" ? new Redis(target, opts) : new Redis({ ...opts, path: target.path });
  r.on("error", () => undefined);
  try {
    await r.connect();
    return (await r.ping()) === "PONG";
  } catch {
    return false;
  } finally {
    r.disconnect();
  }
}

/**
 * A `redis-server` on a free 127.0.0.1 port with its own data directory; AOF
 * (appendfsync always) when asked, so a restart keeps every acknowledged write.
 * It starts on its unix socket alone and opens the TCP port (CONFIG SET port) once
 * the `beforeListen` hooks have run.
 */
export async function startOwnRedis(opts: { aof?: boolean; dir?: string } = {}): Promise<OwnRedis> {
  const port = await freePort();
  const made = opts.dir === undefined;
  const dir = opts.dir ?? mkdtempSync(path.join(os.tmpdir(), "citadel-redis-"));
  const socket = path.join(dir, "redis.sock");
  let child: ChildProcess | null = null;
  const hooks: (() => Promise<void>)[] = [];
  const url = `redis://127.0.0.1:${port}`;
  const args = [
    "--port",
    "0",
    "--unixsocket",
    socket,
    "--unixsocketperm",
    "700",
    "--bind",
    "127.0.0.1",
    "--dir",
    dir,
    "--save",
    "",
    "--protected-mode",
    "yes",
    "--maxmemory-policy",
    "noeviction",
    ...(opts.aof ? ["--appendonly", "yes", "--appendfsync", "always"] : ["--appendonly", "no"]),
  ];
  const handle: OwnRedis = {
    url,
    port,
    dir,
    socket,
    get running() {
      return child !== null && child.exitCode === null && child.signalCode === null;
    },
    start: async () => {
      const c = spawn("redis-server", args, { stdio: ["ignore", "ignore", "pipe"] });
      child = c;
      const deadline = Date.now() + 10_000;
      while (!(await pingRedis({ path: socket }))) {
        if (c.exitCode !== null) throw new Error(`redis-server exited with ${c.exitCode}`);
        if (Date.now() > deadline) throw new Error("redis-server did not answer within 10 s");
        await sleep(50);
      }
      for (const hook of hooks) await hook();
      const admin = new Redis({ path: socket, maxRetriesPerRequest: 0, retryStrategy: () => null });
      admin.on("error", () => undefined);
      try {
        await admin.config("SET", "port", String(port));
      } finally {
        admin.disconnect();
      }
      if (!(await pingRedis(url))) throw new Error(`redis-server did not open ${url}`);
    },
    stop: async (signal = "SIGTERM") => {
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise<void>((r) => c.once("exit", () => r()));
      c.kill(signal);
      await exited;
    },
    close: async () => {
      await handle.stop();
      if (made) rmSync(dir, { recursive: true, force: true });
    },
    beforeListen: (hook) => {
      hooks.push(hook);
    },
  };
  await handle.start();
  return handle;
}

// ---------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------

export interface Proc extends FleetProcess {
  pid: number;
}

/**
 * Starts `apps/<app>` as a child process (logs in logDir) and waits for its readyz: from
 * source when the harness runs from source (`node --conditions=@citadel/source --import tsx`),
 * built when it runs built, or as `opts.form` says.
 */
export async function startProc(
  app: "api" | "worker",
  name: string,
  env: Record<string, string>,
  logDir: string,
  port: number,
  opts: { timeoutMs?: number; nodeArgs?: string[]; form?: AppForm } = {},
): Promise<Proc> {
  const p = await startProcess(app, name, env, logDir, `http://127.0.0.1:${port}/readyz`, opts);
  return { ...p, pid: p.child.pid ?? 0 };
}

/** Resident set size of a process from /proc (bytes), 0 when it is gone. */
export function rssOf(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1];
    return kb ? Number(kb) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** CPU time (user+system, ms) a process has used, from /proc/<pid>/stat. */
export function cpuMsOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[11] ?? 0) + Number(fields[12] ?? 0);
    return (ticks * 1000) / 100;
  } catch {
    return 0;
  }
}

/** The pid of the Redis server `redis` talks to (from INFO server), 0 when it does not say. */
export async function redisPidOf(redis: Pick<Redis, "info">): Promise<number> {
  return Number(/process_id:(\d+)/.exec(await redis.info("server"))?.[1] ?? "0");
}

/** A gauge from a Prometheus text endpoint (first sample of `name`). */
export async function scrapeMetric(url: string, name: string): Promise<number | null> {
  const text = await fetch(url).then(
    (r) => r.text(),
    () => "",
  );
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+)$`, "m").exec(text);
  return m?.[1] ? Number(m[1]) : null;
}

// ---------------------------------------------------------------------------------
// Redis measurements
// ---------------------------------------------------------------------------------

export type CommandStats = Map<string, number>;

export async function commandStats(redis: Redis): Promise<CommandStats> {
  const info = await redis.info("commandstats");
  const stats: CommandStats = new Map();
  for (const line of info.split("\n")) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line.trim());
    if (m?.[1] && m[2]) stats.set(m[1], Number(m[2]));
  }
  return stats;
}

/** Commands executed between two snapshots (those run inside Lua scripts included), in all and by command. */
export function commandDelta(a: CommandStats, b: CommandStats): { all: number; byCommand: Record<string, number> } {
  let all = 0;
  const byCommand: Record<string, number> = {};
  for (const [k, v] of b) {
    if (k === "info") continue;
    const d = v - (a.get(k) ?? 0);
    if (d <= 0) continue;
    byCommand[k] = d;
    all += d;
  }
  return { all, byCommand };
}

// ---------------------------------------------------------------------------------
// A fleet's shared state: keyring, models, tenant
// ---------------------------------------------------------------------------------

export interface FleetSetup {
  dir: string;
  logDir: string;
  prefix: string;
  /** Env every Citadel process gets (Redis, prefix, store, keys). */
  env: Record<string, string>;
  ctx: CliContext;
  /** A connection of the harness's own: a Cluster client when the URL names a Redis Cluster. */
  redis: RedisConn;
  apiKey: string;
  publish(bytes: Uint8Array, req: SealRequest): Promise<void>;
  addTenant(t: TenantInput): Promise<string>;
  close(): Promise<void>;
}

export interface FleetSetupOptions {
  redisUrl: string;
  prefix?: string;
  dir?: string;
  env?: Record<string, string>;
  tenant?: Partial<TenantInput>;
}

export async function setupFleet(opts: FleetSetupOptions): Promise<FleetSetup> {
  const core = await setupFleetCore(opts);
  const redis: RedisConn = isClusterTarget(opts.redisUrl)
    ? redisClient(opts.redisUrl, () => undefined)
    : new Redis(opts.redisUrl, { maxRetriesPerRequest: 1 });
  redis.on("error", () => undefined);
  return {
    ...core,
    redis,
    close: async () => {
      await core.close();
      redis.disconnect();
    },
  };
}

/**
 * setupFleet without its plain Redis client: for a fleet on a Redis Cluster
 * (`redis+cluster://…`), which the CLI context's client speaks to.
 */
export async function setupFleetCore(opts: FleetSetupOptions): Promise<Omit<FleetSetup, "redis">> {
  const made = opts.dir === undefined;
  const dir = opts.dir ?? mkdtempSync(path.join(os.tmpdir(), "citadel-bench-"));
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const keyring = path.join(dir, "keyring.json");
  initKeyring(keyring);
  const prefix = opts.prefix ?? `{bench-${process.pid}}`;
  const env: Record<string, string> = {
    NODE_ENV: "development",
    LOG_LEVEL: "warn",
    REDIS_URL: opts.redisUrl,
    CITADEL_PREFIX: prefix,
    MODEL_STORE_DIR: path.join(dir, "store"),
    KEY_PROVIDER: "local",
    LOCAL_KEYRING: keyring,
    ...opts.env,
  };
  const ctx = openContext(loadCliEnv(env));
  await ctx.redis.connect();
  const tenants = new TenantStore(ctx.redis, prefix);
  await tenants.upsert({
    id: "bench",
    models: ["*"],
    requestRate: 1_000_000,
    requestBurst: 1_000_000,
    sampleRate: 10_000_000,
    sampleBurst: 10_000_000,
    maxQueuedJobs: 1_000_000,
    ...opts.tenant,
  });
  const apiKey = await tenants.issueKey("bench");
  return {
    dir,
    logDir: path.join(dir, "logs"),
    prefix,
    env,
    ctx,
    apiKey,
    publish: async (bytes, req) => {
      const sealed = await sealBytes(ctx, bytes, req);
      await publishSealed(ctx, sealed, { stable: true });
    },
    addTenant: async (t) => {
      await tenants.upsert(t);
      return tenants.issueKey(t.id);
    },
    close: async () => {
      await ctx.close();
      // A directory of its own making (the dev keyring's master keys among it) does not outlive the run.
      if (made) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Env for an API process on `port` (no rate limits in the way of a benchmark). */
export function apiEnv(
  base: Record<string, string>,
  port: number,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    ...base,
    API_HOST: "127.0.0.1",
    API_PORT: String(port),
    // Several APIs may run on one host; nothing here scrapes them.
    METRICS_HOST: "127.0.0.1",
    METRICS_PORT: "0",
    BOARD_ADMIN_PASSWORD: "bench-admin-password",
    BOARD_OPS_PASSWORD: "bench-ops-password",
    IP_RATE: "1000000",
    IP_BURST: "1000000",
    OPENAPI_UI: "false",
    MAX_QUEUE_DEPTH: "1000000",
    BULK_MAX_JOBS: "1000",
    ...extra,
  };
}

export function workerEnv(
  base: Record<string, string>,
  port: number,
  id: string,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    ...base,
    WORKER_ID: id,
    METRICS_HOST: "127.0.0.1",
    METRICS_PORT: String(port),
    EXECUTION_PROVIDERS: "cpu",
    RUNTIME_THREADS: "1",
    ...extra,
  };
}

// ---------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------

export interface EncodedInput {
  dtype: "float32";
  shape: number[];
  data: string;
}

export interface ResultView {
  id: string;
  status: "queued" | "active" | "completed" | "failed" | "cancelled";
  /** The job's times (ISO), as the API's view gives them. */
  createdAt?: string;
  startedAt?: string;
  finishedAt?: string;
  result?: {
    outputs: Record<string, { dtype: string; shape: number[]; data: string }>;
    batchSize: number;
    inferenceMs: number;
    queueMs: number;
    provider: string;
  };
  error?: { code: string; message: string };
}

/**
 * The load generator's HTTP client: node:http on keep-alive sockets, the body written
 * as it is (fetch copies a typed-array body into a stream of its own on every request,
 * which on 1.7 MB bodies costs the box more CPU than the request's parsing does).
 */
export class Client {
  private readonly headers: Record<string, string>;
  private readonly agent = new http.Agent({ keepAlive: true });
  constructor(
    public baseUrl: string,
    apiKey: string,
  ) {
    this.headers = { authorization: `Bearer ${apiKey}`, "content-type": "application/json" };
  }

  /** One request; resolves with the status and the parsed JSON body ({} when it is not JSON). Throws on network errors. */
  private request(
    method: "GET" | "POST",
    pathAndQuery: string,
    opts: { headers?: Record<string, string>; body?: string | Uint8Array; timeoutMs?: number } = {},
  ): Promise<{ status: number; json: Record<string, unknown> }> {
    const body = typeof opts.body === "string" ? Buffer.from(opts.body) : opts.body;
    return new Promise((resolve, reject) => {
      const req = http.request(
        `${this.baseUrl}${pathAndQuery}`,
        {
          method,
          agent: this.agent,
          headers: {
            ...(opts.headers ?? this.headers),
            ...(body ? { "content-length": String(body.byteLength) } : {}),
          },
          ...(opts.timeoutMs ? { signal: AbortSignal.timeout(opts.timeoutMs) } : {}),
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("error", reject);
          res.on("end", () => {
            let json: Record<string, unknown> = {};
            try {
              json = JSON.parse(Buffer.concat(chunks).toString("utf8")) as Record<string, unknown>;
            } catch {
              // Not JSON (e.g. an empty body): the status says what happened.
            }
            resolve({ status: res.statusCode ?? 0, json });
          });
        },
      );
      req.on("error", reject);
      req.end(body);
    });
  }

  /** POST /v1/jobs; resolves with status and body (never throws on HTTP errors; throws on network errors). */
  async submit(body: string, idempotencyKey?: string): Promise<{ status: number; id?: string; code?: string }> {
    const res = await this.request("POST", "/v1/jobs", {
      headers: idempotencyKey ? { ...this.headers, "idempotency-key": idempotencyKey } : this.headers,
      body,
      timeoutMs: 15_000,
    });
    const json = res.json as { id?: string; error?: { code: string } };
    return {
      status: res.status,
      ...(json.id ? { id: json.id } : {}),
      ...(json.error ? { code: json.error.code } : {}),
    };
  }

  /**
   * Submit and wait in one request: `POST /v1/jobs?wait=ms` answers 200 with the job's
   * view once it is final, or 202 {id} when it is not final in time (and from an API
   * without submit-and-wait); then `GET /v1/jobs/:id?wait=` until final. `headerLength`
   * sends `body` as a binary tensor body (its first `headerLength` bytes the JSON header).
   * Never throws on HTTP errors: `status` and the error's code and message say what.
   */
  async submitAndWait(
    body: string | Uint8Array,
    opts: { headerLength?: number; waitMs?: number } = {},
  ): Promise<{ status: number; view?: ResultView; code?: string; message?: string }> {
    const waitMs = opts.waitMs ?? 30_000;
    const headers =
      opts.headerLength === undefined
        ? this.headers
        : {
            ...this.headers,
            "content-type": "application/octet-stream",
            "inference-header-content-length": String(opts.headerLength),
          };
    const res = await this.request("POST", `/v1/jobs?wait=${waitMs}`, { headers, body, timeoutMs: waitMs + 15_000 });
    const json = res.json as Partial<ResultView> & {
      error?: { code: string; message?: string };
      code?: string;
      message?: string;
    };
    if (res.status === 200 && json.id && json.status) return { status: 200, view: json as ResultView };
    if (res.status === 202 && json.id) return { status: 202, view: await this.waitFinal(json.id, waitMs) };
    // Citadel's errors are {error: {code, message}}; Fastify's own (e.g. 415) are {code, message}.
    const code = json.error?.code ?? json.code;
    const message = json.error?.message ?? json.message;
    return { status: res.status, ...(code ? { code } : {}), ...(message ? { message } : {}) };
  }

  async bulk(
    body: string,
    idempotencyKey?: string,
  ): Promise<{ status: number; results: { id?: string; error?: { code: string } }[]; code?: string }> {
    const res = await this.request("POST", "/v1/jobs/bulk", {
      headers: idempotencyKey ? { ...this.headers, "idempotency-key": idempotencyKey } : this.headers,
      body,
    });
    const json = res.json as {
      results?: { id?: string; error?: { code: string } }[];
      jobs?: { id?: string; error?: { code: string } }[];
      error?: { code: string };
    };
    return {
      status: res.status,
      results: json.results ?? json.jobs ?? [],
      ...(json.error ? { code: json.error.code } : {}),
    };
  }

  async view(id: string, waitMs = 0): Promise<{ status: number; view: ResultView }> {
    const res = await this.request("GET", `/v1/jobs/${id}${waitMs > 0 ? `?wait=${waitMs}` : ""}`);
    return { status: res.status, view: res.json as unknown as ResultView };
  }

  /** Long-polls until the job is final. */
  async waitFinal(id: string, waitMs = 30_000): Promise<ResultView> {
    for (;;) {
      const { view } = await this.view(id, waitMs);
      if (view.status !== "queued" && view.status !== "active") return view;
    }
  }

  /** Closes the idle keep-alive sockets (the process can then exit without waiting on them). */
  close(): void {
    this.agent.destroy();
  }
}

export function b64(a: Float32Array): string {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("base64");
}

export function decodeF32(s: string): Float32Array {
  const raw = Buffer.from(s, "base64");
  return new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
}

/** mulberry32 (shared with the models' weights): deterministic inputs. */
export const prng = mulberry32;

export function randomInput(n: number, seed: number): Float32Array {
  const r = prng(seed);
  return Float32Array.from({ length: n }, () => r() * 2 - 1);
}

/** CPU time (ms) of a process's threads by name (`comm`; Node's unnamed threads by tid). */
export function threadCpuByName(pid: number): Map<string, number> {
  const byName = new Map<string, number>();
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      // Threads Node leaves unnamed ("node") are told apart by their tid.
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const name = Number(tid) === pid ? "main" : comm === "node" ? `thread ${tid}` : comm;
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const ms = ((Number(f[11] ?? 0) + Number(f[12] ?? 0)) * 1000) / 100;
      byName.set(name, (byName.get(name) ?? 0) + ms);
    }
  } catch {
    // gone
  }
  return byName;
}

/** CPU time (ms) per thread of a process: the main thread (tid = pid) and the others. */
export function threadCpuMs(pid: number): { main: number; others: number } {
  let main = 0;
  let others = 0;
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const ms = ((Number(f[11] ?? 0) + Number(f[12] ?? 0)) * 1000) / 100;
      if (Number(tid) === pid) main += ms;
      else others += ms;
    }
  } catch {
    // gone
  }
  return { main, others };
}
