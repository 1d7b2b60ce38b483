import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { ApiEnv, type ApiHandle, startApi } from "@citadel/api";
import { AuditKey } from "@citadel/audit";
import { type CliContext, loadCliEnv, openContext } from "@citadel/cli/context";
import { publishSealed, type SealRequest, sealBytes } from "@citadel/cli/models";
import { CommonEnv, parseEnv } from "@citadel/config";
import { initKeyring, LocalKeyProvider } from "@citadel/keys";
import {
  closeRedis,
  deploymentKeyPattern,
  isClusterTarget,
  type RedisConn,
  redisClient,
  scanKeys,
} from "@citadel/queue";
import { type TenantInput, TenantStore } from "@citadel/tenants";
import { startWorker, WorkerEnv, type WorkerHandle } from "@citadel/worker";
import { Redis } from "ioredis";
import { inject } from "vitest";

/**
 * A JSON response read loosely: tests assert field by field, and a missing field fails
 * the assertion that reads it. The one place the harness opts out of strict types.
 */
// biome-ignore lint/suspicious/noExplicitAny: see above
export type Loose = any;

/** Every log line a test fleet writes, for leak checks. */
export class LogCapture extends Writable {
  readonly lines: string[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void) {
    this.lines.push(chunk.toString());
    cb();
  }
  get text(): string {
    return this.lines.join("");
  }
}

export interface TestFleet {
  prefix: string;
  dir: string;
  apiUrl: string;
  /** The API's /metrics listener (apart from apiUrl). */
  apiMetricsUrl: string;
  apiKey: string;
  api: ApiHandle;
  workers: WorkerHandle[];
  ctx: CliContext;
  /** A plain client of the fleet's Redis (a Cluster when the fleet runs on one). */
  redis: RedisConn;
  logs: LogCapture;
  env: Record<string, string>;
  /** The keys the fleet's audit records are MACed with (the dev keyring's), for verifyAuditStream. */
  auditKeys: AuditKey[];
  publish(bytes: Uint8Array, req: SealRequest, routing?: { stable?: boolean; canaryWeight?: number }): Promise<void>;
  addTenant(t: TenantInput): Promise<string>;
  startWorker(extra?: Record<string, string>): Promise<WorkerHandle>;
  request(
    method: string,
    url: string,
    body?: unknown,
    headers?: Record<string, string>,
  ): Promise<{ status: number; json: Loose; headers: Headers }>;
  close(): Promise<void>;
}

export function redisUrl(): string {
  return inject("redisUrl");
}

/** Deletes every key under a prefix (a test's own namespace on the shared Redis). */
export async function deletePrefix(redis: RedisConn, prefix: string): Promise<void> {
  const keys = await scanKeys(redis, deploymentKeyPattern(prefix));
  // One key per command: a deployment's keys span slots (a family each), and a cluster's DEL takes one slot.
  for (let i = 0; i < keys.length; i += 1000) await Promise.all(keys.slice(i, i + 1000).map((k) => redis.unlink(k)));
}

/**
 * A fleet in this process: API and workers composed from the real packages, over the
 * shared Redis under a prefix of the test's own, with a fresh keyring and model store.
 * Models are published before workers start or after; both work.
 */
export async function startTestFleet(
  opts: {
    workers?: number;
    env?: Record<string, string>;
    workerEnv?: Record<string, string>;
    /** Runs with the fleet's fresh directory before anything starts; returns more env. */
    beforeStart?: (dir: string) => Record<string, string>;
  } = {},
): Promise<TestFleet> {
  const prefix = `{t-${randomBytes(5).toString("hex")}}`;
  const dir = mkdtempSync(path.join(os.tmpdir(), "citadel-fleet-"));
  const keyring = path.join(dir, "keyring.json");
  initKeyring(keyring);
  const env: Record<string, string> = {
    NODE_ENV: "test",
    LOG_LEVEL: "info",
    REDIS_URL: redisUrl(),
    CITADEL_PREFIX: prefix,
    MODEL_STORE_DIR: path.join(dir, "store"),
    KEY_PROVIDER: "local",
    LOCAL_KEYRING: keyring,
    ...opts.env,
  };
  Object.assign(env, opts.beforeStart?.(dir));
  const logs = new LogCapture();
  const ctx = openContext(loadCliEnv(env));
  await ctx.redis.connect();
  // opts.env may point the fleet at a Redis Cluster (REDIS_URL redis+cluster://… or REDIS_CLUSTER_NODES).
  const target = parseEnv(CommonEnv, env);
  const redis: RedisConn = isClusterTarget(target) ? redisClient(target, () => undefined) : new Redis(redisUrl());
  const api = await startApi(
    parseEnv(ApiEnv, {
      ...env,
      API_HOST: "127.0.0.1",
      API_PORT: "0",
      METRICS_HOST: "127.0.0.1",
      METRICS_PORT: "0",
      BOARD_ADMIN_PASSWORD: "admin-password-for-tests",
      BOARD_OPS_PASSWORD: "ops-password-for-tests",
      IP_RATE: "100000",
      IP_BURST: "100000",
      // The API here shares its event loop with in-process workers (model loads, closes)
      // and the test itself: a stall of theirs on a loaded CI box is not the API's load,
      // and must not shed its requests with 503 OVERLOADED.
      MAX_EVENT_LOOP_DELAY_MS: "10000",
    }),
    { logDestination: logs },
  );
  const workers: WorkerHandle[] = [];
  const startOne = async (extra: Record<string, string> = {}) => {
    const w = await startWorker(
      parseEnv(WorkerEnv, {
        ...env,
        METRICS_HOST: "127.0.0.1",
        METRICS_PORT: "0",
        RUNTIME_THREADS: "1",
        WORKER_ID: `w${workers.length + 1}-${prefix}`,
        ...opts.workerEnv,
        ...extra,
      }),
      { logDestination: logs },
    );
    workers.push(w);
    return w;
  };
  for (let i = 0; i < (opts.workers ?? 1); i++) await startOne();
  const tenants = new TenantStore(ctx.redis, prefix);
  await tenants.upsert({
    id: "acme",
    models: ["*"],
    requestRate: 10_000,
    requestBurst: 10_000,
    sampleRate: 1_000_000,
    sampleBurst: 1_000_000,
  });
  const apiKey = await tenants.issueKey("acme");
  const fleet: TestFleet = {
    prefix,
    dir,
    apiUrl: api.url,
    apiMetricsUrl: api.metricsUrl,
    apiKey,
    api,
    workers,
    ctx,
    redis,
    logs,
    env,
    auditKeys: [new AuditKey(new LocalKeyProvider(keyring).auditSecret())],
    publish: async (bytes, req, routing = { stable: true }) => {
      const sealed = await sealBytes(ctx, bytes, req);
      await publishSealed(ctx, sealed, routing);
      // The API refreshes its catalog on the registry event; wait until it sees the version.
      for (let i = 0; i < 1500; i++) {
        const r = await fleet.request("GET", "/v1/models");
        const m = (r.json.models as { name: string; versions: { version: string }[] }[] | undefined)?.find(
          (x) => x.name === req.name,
        );
        if (
          m?.versions.some((v) => v.version === req.version) ||
          (routing.canaryWeight === undefined && !routing.stable)
        )
          return;
        await new Promise((res) => setTimeout(res, 20));
      }
      throw new Error(`API never saw ${req.name}@${req.version}`);
    },
    addTenant: async (t) => {
      await tenants.upsert(t);
      return tenants.issueKey(t.id);
    },
    startWorker: startOne,
    request: async (method, url, body, headers = {}) => {
      const res = await fetch(`${api.url}${url}`, {
        method,
        headers: {
          authorization: `Bearer ${apiKey}`,
          ...(body !== undefined ? { "content-type": "application/json" } : {}),
          ...headers,
        },
        ...(body !== undefined ? { body: typeof body === "string" ? body : JSON.stringify(body) } : {}),
      });
      const text = await res.text();
      let json: unknown = null;
      try {
        json = JSON.parse(text);
      } catch {
        json = { raw: text };
      }
      return { status: res.status, json, headers: res.headers };
    },
    close: async () => {
      await Promise.all(workers.map((w) => w.close()));
      await api.close();
      await deletePrefix(redis, prefix);
      await ctx.close();
      await closeRedis(redis);
      // The fleet's keyring (its master keys) and model store go with it: nothing is left in the temp dir.
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return fleet;
}

/**
 * Stops the fleet's workers, lets `submitAll` queue its jobs, then starts one fresh
 * worker: every job is waiting when it starts, so which jobs share a run does not
 * depend on timing (the tests that assert sharing use this).
 */
export async function queuedBeforeWorker<T>(fleet: TestFleet, submitAll: () => Promise<T>): Promise<T> {
  await Promise.all(fleet.workers.splice(0).map((w) => w.close()));
  const r = await submitAll();
  await fleet.startWorker();
  return r;
}

/** Encodes a Float32Array as the API's base64 tensor data. */
export function b64(data: Float32Array | BigInt64Array | Int32Array): string {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("base64");
}

export function decodeF32(data: string): Float32Array {
  const raw = Buffer.from(data, "base64");
  return new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
}
