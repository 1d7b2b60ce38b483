import { randomBytes } from "node:crypto";
import { ApiEnv, type ApiHandle, startApi } from "@citadel/api";
import { type AuditRecord, readAuditEntries } from "@citadel/audit";
import { publishSealed, type SealRequest, sealBytes } from "@citadel/cli/models";
import { parseEnv } from "@citadel/config";
import { ErrorCode, type JobData, type TensorPayload } from "@citadel/contracts";
import { type JobQueues, keys, modelOfJobId, queueName, queuePrefix, type RedisConn } from "@citadel/queue";
import { Queue } from "bullmq";
import { b64, LogCapture, type Loose, type TestFleet } from "./fleet.js";

/** Board credentials startTestFleet gives its API. */
export const BOARD_ADMIN = { username: "admin", password: "admin-password-for-tests" } as const;
export const BOARD_OPS = { username: "ops", password: "ops-password-for-tests" } as const;

/** Polls `probe` until it returns something other than undefined/false, or fails after `timeoutMs`. */
export async function pollUntil<T>(
  what: string,
  probe: () => Promise<T | undefined | false>,
  timeoutMs = 10_000,
  intervalMs = 25,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`, { cause: last });
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Seals and publishes a model as stable, then waits until the fleet's API lists it.
 * Like fleet.publish, with a deadline that holds on a loaded machine (fleet.publish waits 2 s).
 */
export async function publishModel(
  fleet: TestFleet,
  bytes: Uint8Array,
  req: SealRequest,
  timeoutMs = 30_000,
): Promise<void> {
  await publishSealed(fleet.ctx, await sealBytes(fleet.ctx, bytes, req), { stable: true });
  await pollUntil(
    `the API to list ${req.name}@${req.version}`,
    async () => {
      const r = await fleet.request("GET", "/v1/models");
      const models = (r.json?.models ?? []) as { name: string; versions: { version: string }[] }[];
      return models.some((m) => m.name === req.name && m.versions.some((v) => v.version === req.version));
    },
    timeoutMs,
    50,
  );
}

/** Every record of the fleet's audit streams (one per writer), oldest first. */
export async function readAudit(fleet: TestFleet): Promise<AuditRecord[]> {
  return (await readAuditEntries(fleet.redis, fleet.prefix)).map((e) => e.rec as unknown as AuditRecord);
}

export type QueueCounts = Record<"waiting" | "prioritized" | "delayed" | "active" | "completed" | "failed", number>;

/**
 * Counts of a model's BullMQ queue in every state, read straight from Redis; `queued`:
 * jobs waiting for a worker (high ones in the wait list, normal and low ones in the
 * prioritized set).
 */
export async function queueCounts(
  fleet: TestFleet,
  model: string,
): Promise<QueueCounts & { total: number; queued: number }> {
  const q = new Queue(queueName(model), { connection: fleet.redis, prefix: queuePrefix(fleet.prefix, model) });
  try {
    const c = await q.getJobCounts("waiting", "prioritized", "delayed", "active", "completed", "failed");
    const counts: QueueCounts = {
      waiting: c.waiting ?? 0,
      prioritized: c.prioritized ?? 0,
      delayed: c.delayed ?? 0,
      active: c.active ?? 0,
      completed: c.completed ?? 0,
      failed: c.failed ?? 0,
    };
    return {
      ...counts,
      total: Object.values(counts).reduce((a, b) => a + b, 0),
      queued: counts.waiting + counts.prioritized,
    };
  } finally {
    await q.close();
  }
}

/** Where each job id is in its model's queue: its state ("missing" when there is no such job) and when it was added. */
export async function jobsWhere(
  fleet: TestFleet,
  ids: Iterable<string>,
): Promise<Map<string, { state: string; addedAt: number }>> {
  const out = new Map<string, { state: string; addedAt: number }>();
  const queues = new Map<string, Queue>();
  try {
    for (const id of ids) {
      const model = modelOfJobId(id);
      let q = queues.get(model);
      if (!q) {
        q = new Queue(queueName(model), { connection: fleet.redis, prefix: queuePrefix(fleet.prefix, model) });
        queues.set(model, q);
      }
      const job = await q.getJob(id);
      out.set(id, job ? { state: await job.getState(), addedAt: job.timestamp } : { state: "missing", addedAt: 0 });
    }
    return out;
  } finally {
    for (const q of queues.values()) await q.close();
  }
}

/**
 * A second API over a fleet's Redis prefix, keyring and tenants, with settings of the
 * test's own (startTestFleet pins IP_RATE/IP_BURST high for its own API).
 */
export async function startExtraApi(fleet: TestFleet, env: Record<string, string>): Promise<ApiHandle> {
  return startApi(
    parseEnv(ApiEnv, {
      ...fleet.env,
      API_HOST: "127.0.0.1",
      API_PORT: "0",
      METRICS_HOST: "127.0.0.1",
      METRICS_PORT: "0",
      BOARD_ADMIN_PASSWORD: BOARD_ADMIN.password,
      BOARD_OPS_PASSWORD: BOARD_OPS.password,
      // As the fleet's own API (test/support/fleet.ts): the event loop is the test's.
      MAX_EVENT_LOOP_DELAY_MS: "10000",
      ...env,
    }),
    { logDestination: new LogCapture() },
  );
}

export interface Answer {
  status: number;
  body: unknown;
  text: string;
  headers: Record<string, string | string[] | number | undefined>;
}

/** One request through Fastify's inject: the real parser, hooks, validation and handlers. */
export async function inject(
  app: ApiHandle["app"],
  req: {
    method: "GET" | "POST" | "DELETE" | "PUT" | "PATCH";
    url: string;
    headers?: Record<string, string>;
    payload?: string | Buffer;
  },
): Promise<Answer> {
  const res = await app.inject({
    method: req.method,
    url: req.url,
    headers: req.headers ?? {},
    ...(req.payload !== undefined ? { payload: req.payload } : {}),
  });
  let body: unknown = null;
  try {
    body = JSON.parse(res.body) as unknown;
  } catch {
    body = null;
  }
  return { status: res.statusCode, body, text: res.body, headers: res.headers };
}

/** The error envelope of docs/contract.md#errors, narrowed from unknown; null when the body is not one. */
export function errorEnvelope(body: unknown): { code: string; message: string } | null {
  if (typeof body !== "object" || body === null || !("error" in body)) return null;
  const e = (body as { error: unknown }).error;
  if (typeof e !== "object" || e === null) return null;
  const { code, message } = e as { code?: unknown; message?: unknown };
  return typeof code === "string" && typeof message === "string" ? { code, message } : null;
}

export function isErrorCode(code: string): boolean {
  return ErrorCode.safeParse(code).success;
}

/** The value of one Prometheus sample whose labels include all of `labels`, or undefined. */
export function metricValue(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`)) continue;
    const close = line.lastIndexOf("}");
    const inside = line.slice(name.length + 1, close);
    const have = new Map<string, string>();
    for (const m of inside.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) have.set(m[1] ?? "", m[2] ?? "");
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(line.slice(close + 1).trim());
  }
  return undefined;
}

/** One conv-net sample ([1,3,32,32], 0.25 everywhere) as the API's base64 tensor. */
export function convInput(): Record<string, TensorPayload> {
  return { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(new Float32Array(3072).fill(0.25)) } };
}

/** Enqueues a one-sample conv-net job straight onto BullMQ, as a Redis writer could: the worker must still refuse what is wrong. */
export async function enqueueDirect(
  queues: JobQueues,
  model: string,
  version: string,
  requestId: string,
): Promise<string> {
  const id = `${model}.${randomBytes(18).toString("base64url")}`;
  const stored = storedInputs(convInput());
  const data: JobData = {
    tenant: "acme",
    model,
    version,
    inputs: stored.meta,
    batch: 1,
    inputBytes: 12288,
    timeoutMs: 5000,
    acceptedAt: Date.now(),
    deadline: Date.now() + 60_000,
    requestId,
  };
  await queues.enqueueMany(model, [{ id, data, inputs: stored.bytes, priority: "normal" }]);
  return id;
}

/**
 * Base64 tensors as a job stores them (description in the job data, bytes back to back
 * beside it), written as a Redis writer could: no validation on the way.
 */
export function storedInputs(inputs: Record<string, { dtype: string; shape: number[]; data: unknown }>): {
  meta: JobData["inputs"];
  bytes: Buffer;
} {
  const entries = Object.entries(inputs);
  return {
    meta: entries.map(([name, t]) => ({ name, dtype: t.dtype as TensorPayload["dtype"], shape: t.shape })),
    bytes: Buffer.concat(entries.map(([, t]) => Buffer.from(String(t.data), "base64"))),
  };
}

/** One conv-net sample as a KServe v2 binary job: its JSON header and its input's bytes. */
export function convBinaryJob(model: string, version?: string): { header: Record<string, unknown>; bytes: Buffer } {
  const x = new Float32Array(3072).fill(0.25);
  return {
    header: {
      model,
      ...(version ? { version } : {}),
      inputs: [{ name: "x", datatype: "FP32", shape: [1, 3, 32, 32], parameters: { binary_data_size: x.byteLength } }],
    },
    bytes: Buffer.from(x.buffer),
  };
}

/** POSTs a binary body (JSON header, then the bytes) the way a KServe v2 client does; the answer read as JSON. */
export async function postBinary(
  fleet: TestFleet,
  url: string,
  header: unknown,
  parts: Uint8Array[],
): Promise<{ status: number; json: Loose }> {
  const head = Buffer.from(JSON.stringify(header), "utf8");
  const res = await fetch(`${fleet.apiUrl}${url}`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${fleet.apiKey}`,
      "content-type": "application/octet-stream",
      "inference-header-content-length": String(head.length),
    },
    body: Buffer.concat([head, ...parts]),
  });
  const text = await res.text();
  return { status: res.status, json: JSON.parse(text) as Loose };
}

/**
 * A part of an OpenAPI document with its `$ref`s replaced by what they name (the
 * document names shared schemas as components), for tests that read a route's schema.
 */
export function inlineRefs(doc: unknown, node: unknown, seen: readonly string[] = []): Loose {
  if (Array.isArray(node)) return node.map((v) => inlineRefs(doc, v, seen));
  if (typeof node !== "object" || node === null) return node;
  const ref = (node as { $ref?: unknown }).$ref;
  if (typeof ref === "string") {
    if (seen.includes(ref)) return node;
    const target = ref
      .replace(/^#\//, "")
      .split("/")
      .reduce<unknown>((at, key) => (at as Record<string, unknown> | undefined)?.[key], doc);
    if (target === undefined) throw new Error(`dangling $ref ${ref}`);
    return inlineRefs(doc, target, [...seen, ref]);
  }
  return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, inlineRefs(doc, v, seen)]));
}

/**
 * A tenant's quota counters (queued jobs, queued bytes) once the outbox relay has given
 * back what its settled jobs held: read until both are "0" (the relay works a few
 * milliseconds behind a job's final state) or 10 s pass, then as they are.
 */
export async function quotaOnceRelayed(
  redis: RedisConn,
  prefix: string,
  tenant: string,
): Promise<[string | null, string | null]> {
  const read = async (): Promise<[string | null, string | null]> => [
    await redis.get(keys.tenantQueuedJobs(prefix, tenant)),
    await redis.get(keys.tenantQueuedBytes(prefix, tenant)),
  ];
  const deadline = Date.now() + 10_000;
  for (;;) {
    const got = await read();
    if ((got[0] === "0" && got[1] === "0") || Date.now() > deadline) return got;
    await new Promise((r) => setTimeout(r, 20));
  }
}
