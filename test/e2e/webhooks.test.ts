import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { ApiEnv, type ApiHandle } from "@citadel/api";
import { parseEnv } from "@citadel/config";
import { buildIdentityModel, buildSlowModel } from "@citadel/onnx";
import { TenantStore } from "@citadel/tenants";
import { Queue } from "bullmq";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BOARD_ADMIN, pollUntil, publishModel, startExtraApi } from "../support/api-kit.js";
import { runCli } from "../support/child.js";
import { type Loose, startTestFleet, type TestFleet } from "../support/fleet.js";

// Issue 12 point 3: completion webhooks (Standard Webhooks signatures, retries, SSRF
// guard) and GET /v1/jobs/{id}/events. The receiver below is written from the Standard
// Webhooks specification (https://www.standardwebhooks.com/), not with Citadel's code:
// it is what a tenant's endpoint would run.

/** One request a receiver got: its headers, its raw body, and what it answered. */
interface Delivery {
  path: string;
  headers: IncomingHttpHeaders;
  raw: string;
  answered: number;
}

/**
 * Verifies a delivery as the specification says a receiver must: the signed content is
 * `<webhook-id>.<webhook-timestamp>.<raw body>`, HMAC-SHA256 keyed with the base64 bytes
 * after `whsec_`; webhook-signature holds space-separated `v1,<base64>` signatures, any
 * one of which may match (compared in constant time); the timestamp must be within five
 * minutes of now (replays of old messages are refused).
 */
function verifySignature(secret: string, headers: IncomingHttpHeaders, raw: string, nowSeconds = Date.now() / 1000) {
  const id = headers["webhook-id"];
  const timestamp = headers["webhook-timestamp"];
  const signatures = headers["webhook-signature"];
  if (typeof id !== "string" || typeof timestamp !== "string" || typeof signatures !== "string") return false;
  if (!/^\d+$/.test(timestamp) || Math.abs(nowSeconds - Number(timestamp)) > 5 * 60) return false;
  const key = Buffer.from(secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret, "base64");
  const expected = createHmac("sha256", key).update(`${id}.${timestamp}.${raw}`).digest();
  return signatures.split(" ").some((candidate) => {
    const comma = candidate.indexOf(",");
    if (comma < 0 || candidate.slice(0, comma) !== "v1") return false;
    const got = Buffer.from(candidate.slice(comma + 1), "base64");
    return got.length === expected.length && timingSafeEqual(got, expected);
  });
}

/** A tenant's webhook endpoint on 127.0.0.1: records every request; `answer` picks each status (200 by default). */
class Receiver {
  readonly got: Delivery[] = [];
  /** Statuses to answer per path, in order; past the list, 200. */
  readonly script = new Map<string, number[]>();
  private server!: Server;
  port = 0;

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const path = req.url ?? "";
        const answered = this.script.get(path)?.shift() ?? 200;
        this.got.push({ path, headers: req.headers, raw: Buffer.concat(chunks).toString("utf8"), answered });
        res.writeHead(answered, { "content-type": "text/plain" }).end(answered < 300 ? "ok" : "try again");
      });
    });
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = (this.server.address() as AddressInfo).port;
  }

  url(path: string): string {
    return `http://127.0.0.1:${this.port}${path}`;
  }

  /** Deliveries whose body announces `subject` (a job or batch id). */
  about(subject: string): Delivery[] {
    return this.got.filter((d) => (JSON.parse(d.raw) as Loose).data?.id === subject);
  }

  /** Waits for `n` deliveries; on timeout the error adds what `explain` says of the state (a full e2e run on Node 24 once saw this wait run out). */
  async waitFor(what: string, pick: () => Delivery[], n = 1, explain?: () => Promise<string>): Promise<Delivery[]> {
    try {
      return await pollUntil(
        what,
        async () => {
          const found = pick();
          return found.length >= n ? found : undefined;
        },
        60_000,
        50,
      );
    } catch (err) {
      if (!explain) throw err;
      throw new Error(`${(err as Error).message}; ${await explain().catch((e: unknown) => `(no state: ${e})`)}`);
    }
  }

  close(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }
}

let fleet: TestFleet;
let receiver: Receiver;
let deliveries: Queue;
/** Tenants: `hooked` has a callback URL and may not name others; `router` may name one per job or batch. */
const keys: Record<string, string> = {};
const secrets: Record<string, string> = {};

/** The CLI, run asynchronously: the API it shares state with lives in this process, and spawnSync would stall it. */
async function citadel(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await runCli(args, { env: { PATH: process.env.PATH ?? "", ...fleet.env } });
  return { code: r.code ?? -1, out: r.out.trim(), err: r.err };
}

async function call(
  method: string,
  url: string,
  tenant: string,
  body?: unknown,
  base = fleet.apiUrl,
): Promise<{ status: number; json: Loose }> {
  const res = await fetch(`${base}${url}`, {
    method,
    headers: {
      authorization: `Bearer ${keys[tenant]}`,
      ...(body === undefined
        ? {}
        : { "content-type": typeof body === "string" ? "application/jsonl" : "application/json" }),
    },
    ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}

const job = (extra: Record<string, unknown> = {}) => ({
  model: "tiny",
  inputs: { x: { dtype: "float32", shape: [1, 4], data: [1, 2, 3, 4] } },
  ...extra,
});

/** A job that fails in the worker: its run takes about a second, its own timeout is the smallest allowed. */
const failing = { model: "slow", inputs: { x: { dtype: "float32", shape: [1, 1], data: [1] } }, timeoutMs: 100 };

beforeAll(async () => {
  receiver = new Receiver();
  await receiver.start();
  fleet = await startTestFleet({
    workers: 1,
    env: {
      WEBHOOK_ALLOW_HOSTS: "127.0.0.1",
      WEBHOOK_ATTEMPTS: "4",
      WEBHOOK_BACKOFF_MS: "200",
      WEBHOOK_TIMEOUT_MS: "10000",
      SSE_HEARTBEAT_MS: "200",
      SSE_MAX_STREAMS_PER_TENANT: "2",
    },
  });
  await publishModel(fleet, buildIdentityModel("float32", ["N", 4]), {
    name: "tiny",
    version: "1",
    spec: { maxBatch: 8, maxQueueDelayMs: 2, inputs: { x: { range: [-10, 10] } } },
  });
  await publishModel(fleet, buildSlowModel({ iterations: 4000 }), {
    name: "slow",
    version: "1",
    spec: { maxBatch: 1, timeoutMs: 60_000 },
  });
  const rates = { requestRate: 10_000, requestBurst: 10_000, sampleRate: 100_000, sampleBurst: 100_000 };
  keys.hooked = await fleet.addTenant({ id: "hooked", models: ["*"], ...rates, callbackUrl: receiver.url("/hooked") });
  keys.router = await fleet.addTenant({ id: "router", models: ["*"], ...rates, allowRequestCallbacks: true });
  keys.other = await fleet.addTenant({ id: "other", models: ["*"], ...rates });
  for (const t of ["hooked", "router"]) {
    const r = await citadel("tenants", "webhook-secret", t);
    expect(r.code, r.err).toBe(0);
    secrets[t] = r.out;
  }
  deliveries = new Queue("webhooks", { connection: fleet.redis, prefix: fleet.prefix });
});
afterAll(async () => {
  await deliveries?.close();
  await fleet?.close();
  await receiver?.close();
});

describe("completion webhooks", () => {
  it("signs a job's notification so a receiver verifies it from the specification alone", async () => {
    expect(secrets.hooked).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    const sub = await call("POST", "/v1/jobs", "hooked", job({ custom_id: "order-7", metadata: { shop: "north" } }));
    expect(sub.status).toBe(202);
    const [d] = await receiver.waitFor("the job's notification", () => receiver.about(sub.json.id));
    if (!d) throw new Error("no delivery");
    expect(d.path).toBe("/hooked");
    expect(d.headers["content-type"]).toBe("application/json");
    expect(verifySignature(secrets.hooked as string, d.headers, d.raw)).toBe(true);
    // The receiver's check can fail: another secret, an edited body, an old timestamp.
    expect(verifySignature(secrets.router as string, d.headers, d.raw)).toBe(false);
    expect(verifySignature(secrets.hooked as string, d.headers, d.raw.replace("order-7", "order-8"))).toBe(false);
    expect(verifySignature(secrets.hooked as string, d.headers, d.raw, Date.now() / 1000 + 600)).toBe(false);
    const body = JSON.parse(d.raw) as Loose;
    expect(body).toMatchObject({
      type: "job.completed",
      data: {
        object: "job",
        id: sub.json.id,
        status: "completed",
        model: "tiny",
        version: "1",
        custom_id: "order-7",
        metadata: { shop: "north" },
      },
    });
    expect(new Date(body.timestamp).getTime()).toBeGreaterThan(0);
    // No outputs travel in a notification: the receiver fetches them with its key.
    expect(body.data.result).toBeUndefined();
    expect(d.raw).not.toContain("outputs");
  });

  it("retries a receiver that answers 500 with the same webhook-id until it answers 2xx, and delivers once", async () => {
    receiver.script.set("/flaky", [500, 503]);
    const sub = await call("POST", "/v1/jobs", "router", job({ callback: receiver.url("/flaky") }));
    expect(sub.status).toBe(202);
    const got = await receiver.waitFor("three attempts", () => receiver.about(sub.json.id), 3);
    expect(got.map((d) => d.answered)).toEqual([500, 503, 200]);
    expect(new Set(got.map((d) => d.headers["webhook-id"])).size).toBe(1);
    for (const d of got) expect(verifySignature(secrets.router as string, d.headers, d.raw)).toBe(true);
    // The same body each time (fixed when the notification was queued); each attempt signed at its own time.
    expect(new Set(got.map((d) => d.raw)).size).toBe(1);
    const stamps = got.map((d) => Number(d.headers["webhook-timestamp"]));
    expect([...stamps].sort()).toEqual(stamps);
    // The delivery job is done: completed after three attempts, nothing more to send.
    const id = got[0]?.headers["webhook-id"] as string;
    const dj = await pollUntil("the delivery job to complete", async () => {
      // The state first, then the job: a job read while still active, and found completed
      // by a later getState, would carry no return value.
      if ((await deliveries.getJobState(id)) !== "completed") return undefined;
      return await deliveries.getJob(id);
    });
    // What the receiver saw is the contract, not BullMQ's attemptsMade (a stalled attempt
    // under load is re-run without counting as made): three calls, the last one answered.
    // The completed job is this notification's, to the URL the job named, and its answer is the 200.
    expect(dj.id).toBe(id);
    expect(dj.data).toMatchObject({ tenant: "router", msgId: id, url: receiver.url("/flaky"), body: got[0]?.raw });
    expect(dj.returnvalue).toEqual({ status: 200 });
    expect(receiver.about(sub.json.id)).toHaveLength(3);
  });

  it("records a delivery that never succeeds as a failed job of the webhooks queue, after its attempts", async () => {
    receiver.script.set("/down", [500, 500, 500, 500, 500]);
    const sub = await call("POST", "/v1/jobs", "router", job({ callback: receiver.url("/down") }));
    const got = await receiver.waitFor("four attempts", () => receiver.about(sub.json.id), 4);
    const id = got[0]?.headers["webhook-id"] as string;
    const dj = await pollUntil("the delivery job to fail", async () => {
      // The state first, then the job (read while still active it would carry neither).
      if ((await deliveries.getJobState(id)) !== "failed") return undefined;
      return await deliveries.getJob(id);
    });
    expect(dj?.attemptsMade).toBe(4);
    expect(dj?.failedReason).toMatch(/answered HTTP 500/);
    const metrics = await (await fetch(`${fleet.apiMetricsUrl}/metrics`)).text();
    expect(metrics).toMatch(/citadel_webhook_deliveries_total\{[^}]*tenant="router"[^}]*outcome="failed"[^}]*\} 1/);
    // The board shows it, with its target reduced to the origin and without its body.
    const auth = `Basic ${Buffer.from(`${BOARD_ADMIN.username}:${BOARD_ADMIN.password}`).toString("base64")}`;
    const shown = await fetch(`${fleet.apiUrl}/admin/queues/api/queues/webhooks/${id}`, {
      headers: { authorization: auth },
    });
    expect(shown.status).toBe(200);
    const text = await shown.text();
    expect(text).toContain(`"target":"http://127.0.0.1:${receiver.port}"`);
    expect(text).not.toContain("/down");
    expect(text).not.toContain(sub.json.id);
  });

  it("notifies failed and cancelled jobs, from the worker and from a cancel that removes a queued job", async () => {
    const failed = await call("POST", "/v1/jobs", "hooked", failing);
    expect(failed.status).toBe(202);
    const [f] = await receiver.waitFor("the failed job's notification", () => receiver.about(failed.json.id));
    expect(JSON.parse(f?.raw ?? "{}")).toMatchObject({
      type: "job.failed",
      data: { id: failed.json.id, status: "failed", error: { code: "TIMEOUT" } },
    });
    // A queued job (no worker runs) removed by DELETE: the API records its notification.
    await Promise.all(fleet.workers.splice(0).map((w) => w.close()));
    try {
      const queued = await call("POST", "/v1/jobs", "hooked", job());
      expect((await call("DELETE", `/v1/jobs/${queued.json.id}`, "hooked")).json.status).toBe("cancelled");
      const [c] = await receiver.waitFor("the cancelled job's notification", () => receiver.about(queued.json.id));
      expect(verifySignature(secrets.hooked as string, c?.headers ?? {}, c?.raw ?? "")).toBe(true);
      expect(JSON.parse(c?.raw ?? "{}")).toMatchObject({
        type: "job.cancelled",
        data: { id: queued.json.id, status: "cancelled" },
      });
    } finally {
      await fleet.startWorker();
    }
  });

  it("notifies a batch once when it completes (to the URL it named), and none of its jobs one by one", async () => {
    const lines = [1, 2, 3]
      .map((i) =>
        JSON.stringify({
          custom_id: `r${i}`,
          body: job({ inputs: { x: { dtype: "float32", shape: [1, 4], data: [i, i, i, i] } } }),
        }),
      )
      .join("\n");
    const named = await call(
      "POST",
      `/v1/batches?callback=${encodeURIComponent(receiver.url("/batches"))}`,
      "router",
      lines,
    );
    expect(named.status).toBe(202);
    const [d] = await receiver.waitFor("the batch's notification", () => receiver.about(named.json.id));
    expect(d?.path).toBe("/batches");
    expect(verifySignature(secrets.router as string, d?.headers ?? {}, d?.raw ?? "")).toBe(true);
    expect(JSON.parse(d?.raw ?? "{}")).toMatchObject({
      type: "batch.completed",
      data: {
        id: named.json.id,
        object: "batch",
        status: "completed",
        counts: { total: 3, accepted: 3, completed: 3 },
      },
    });
    // The tenant's own callback URL gets its batches' completions too, and no notification per line.
    const own = await call("POST", "/v1/batches", "hooked", lines);
    await receiver.waitFor("the second batch's notification", () => receiver.about(own.json.id));
    const results = await fetch(`${fleet.apiUrl}/v1/batches/${own.json.id}/results`, {
      headers: { authorization: `Bearer ${keys.hooked}` },
    });
    const ids = (await results.text())
      .trim()
      .split("\n")
      .map((l) => (JSON.parse(l) as Loose).id as string);
    expect(ids).toHaveLength(3);
    // A per-line notification, were one recorded, would be in the notifications stream before
    // this job's (its line finished first) and the relay hands entries off in order: once
    // this job's notification arrived, any such notification is a job of the webhooks queue
    // (completed ones are kept for a day), whether or not it was delivered yet.
    const marker = await call("POST", "/v1/jobs", "hooked", job());
    expect(marker.status).toBe(202);
    await receiver.waitFor("a later job's notification", () => receiver.about(marker.json.id));
    const queued = await deliveries.getJobs(["completed", "failed", "active", "waiting", "delayed", "prioritized"]);
    const about = (j: (typeof queued)[number]) => (JSON.parse(j.data.body) as Loose).data?.id as string;
    expect(queued.map(about)).toEqual(expect.arrayContaining([own.json.id, marker.json.id]));
    for (const id of ids) {
      expect(queued.filter((j) => about(j) === id)).toEqual([]);
      expect(receiver.about(id)).toEqual([]);
    }
    expect(receiver.about(own.json.id)).toHaveLength(1);
  });

  it("refuses a per-job or per-batch callback from a tenant not allowed to name one (403)", async () => {
    const one = await call("POST", "/v1/jobs", "hooked", job({ callback: receiver.url("/x") }));
    expect(one.status).toBe(403);
    expect(one.json.error.code).toBe("CALLBACK_NOT_ALLOWED");
    const bulk = await call("POST", "/v1/jobs/bulk", "hooked", {
      jobs: [job(), job({ callback: receiver.url("/x") })],
    });
    expect(bulk.status).toBe(202);
    expect(bulk.json.jobs[0].status).toBe("queued");
    expect(bulk.json.jobs[1]).toMatchObject({ status: 403, error: { code: "CALLBACK_NOT_ALLOWED" } });
    const batch = await call("POST", `/v1/batches?callback=${encodeURIComponent(receiver.url("/x"))}`, "hooked", "{}");
    expect(batch.status).toBe(403);
    expect(batch.json.error.code).toBe("CALLBACK_NOT_ALLOWED");
    // A batch line never names a callback of its own: the line is refused, not the batch.
    const line = JSON.stringify({ custom_id: "a", body: job({ callback: receiver.url("/x") }) });
    const withLine = await call("POST", "/v1/batches", "router", line);
    expect(withLine.status).toBe(202);
    expect(withLine.json.counts).toMatchObject({ total: 1, refused: 1 });
  });
});

describe("the callback target guard (SSRF)", () => {
  let strict: ApiHandle;

  beforeAll(async () => {
    // Another API over the same fleet with no allowlist (and no notifier of its own).
    strict = await startExtraApi(fleet, { WEBHOOK_ALLOW_HOSTS: "", WEBHOOK_NOTIFIER: "false" });
  });
  afterAll(async () => {
    await strict?.close();
  });

  it.each([
    "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.1/hook",
    "https://192.168.1.1/hook",
    "https://100.64.0.1/hook",
    "https://[::1]/hook",
    "https://[fd00::1]/hook",
    "https://[::ffff:169.254.169.254]/hook",
    "http://127.0.0.2/hook",
    "http://example.com/hook",
    "https://nowhere.invalid/hook",
  ])("refuses %s at submit, even with 127.0.0.1 allowlisted", async (url) => {
    const r = await call("POST", "/v1/jobs", "router", job({ callback: url }));
    expect(r.status).toBe(400);
    expect(r.json.error.code).toBe("CALLBACK_URL_REFUSED");
  });

  it.each([
    "http://127.0.0.1:9/hook",
    "https://127.0.0.1/hook",
    "https://localhost/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:7f00:1]/hook",
    "https://0x7f000001/hook",
  ])("refuses %s at submit when no allowlist names loopback", async (url) => {
    const r = await call("POST", "/v1/jobs", "router", job({ callback: url }), strict.url);
    expect(r.status).toBe(400);
    expect(r.json.error.code).toBe("CALLBACK_URL_REFUSED");
  });

  it("refuses at delivery a target that reached a tenant's definition without the check (no request is made)", async () => {
    const store = new TenantStore(fleet.redis, fleet.prefix);
    // As if written to Redis directly, or registered before the rules were tightened.
    await store.upsert({
      id: "sneaky",
      models: ["*"],
      requestRate: 1000,
      requestBurst: 1000,
      callbackUrl: "https://169.254.169.254/latest/meta-data/iam/",
    });
    keys.sneaky = await store.issueKey("sneaky");
    const sub = await call("POST", "/v1/jobs", "sneaky", job());
    expect(sub.status).toBe(202);
    const failed = await pollUntil("the refused delivery", async () => {
      const jobs = await deliveries.getFailed();
      return jobs.find((j) => j.data.tenant === "sneaky");
    });
    // Refused at once: not retried.
    expect(failed.attemptsMade).toBe(1);
    expect(failed.failedReason).toMatch(/^CALLBACK_URL_REFUSED: .*169\.254\.169\.254 is a link-local/);
  });

  it("refuses an allowlist entry that is not a host, address or range when the API starts", () => {
    const problems = (() => {
      try {
        parseEnv(ApiEnv, { ...fleet.env, WEBHOOK_ALLOW_HOSTS: "127.0.0.1,https://x.example/" });
        return "";
      } catch (err) {
        return String(err);
      }
    })();
    expect(problems).toMatch(/WEBHOOK_ALLOW_HOSTS: .*'https:\/\/x\.example\/' is not a host name/);
  });

  it("refuses a tenant's callback URL at registration with the CLI", async () => {
    const r = await citadel("tenants", "add", "badhook", "--callback-url", "https://169.254.169.254/");
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/CALLBACK_URL_REFUSED/);
    expect((await citadel("tenants", "add", "okhook", "--callback-url", receiver.url("/ok"))).code).toBe(0);
  });
});

/**
 * Where a job's notification is, for a wait that ran out: the job's view, the delivery
 * jobs of its tenant's queue, the receiver's paths, and the fleet's webhook log lines.
 */
async function deliveryState(jobId: string): Promise<string> {
  const view = await call("GET", `/v1/jobs/${jobId}`, "hooked");
  const jobs = await deliveries.getJobs(["active", "waiting", "delayed", "prioritized", "failed", "completed"]);
  const mine = await Promise.all(
    jobs
      .filter((j) => String(j.data?.body ?? "").includes(jobId))
      .map(async (j) => ({ id: j.id, state: await j.getState(), attempts: j.attemptsMade, failed: j.failedReason })),
  );
  const logs = fleet.logs.lines.filter((l) => /webhook|relay|outbox|notif/i.test(l)).slice(-20);
  return JSON.stringify({
    job: { status: view.status, state: view.json?.status, error: view.json?.error },
    deliveryJobs: mine,
    received: receiver.got.map((g) => g.path).slice(-10),
    logs,
  });
}

/** An SSE stream read as it arrives: its events (name and parsed data) and comment lines. */
async function openEvents(base: string, id: string, tenant: string, signal?: AbortSignal) {
  const res = await fetch(`${base}/v1/jobs/${id}/events`, {
    headers: { authorization: `Bearer ${keys[tenant]}`, accept: "text/event-stream" },
    ...(signal ? { signal } : {}),
  });
  const events: { event: string; data: Loose }[] = [];
  const comments: string[] = [];
  let ended = false;
  // A refused stream's answer, for the assertion that fails on it (CI once saw 503s here).
  const refusal = res.status === 200 ? "" : `${res.status} ${await res.text()}`;
  const done = (async () => {
    if (!res.body || res.status !== 200) return;
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for await (const chunk of res.body) {
        buffer += decoder.decode(chunk, { stream: true });
        let cut = buffer.indexOf("\n\n");
        while (cut >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let event = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) comments.push(line);
            else if (line.startsWith("event: ")) event = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) events.push({ event, data: JSON.parse(data) });
          cut = buffer.indexOf("\n\n");
        }
      }
    } catch {
      // Aborted by the test.
    }
    ended = true;
  })();
  return { res, refusal, events, comments, done, ended: () => ended };
}

describe("GET /v1/jobs/{id}/events", () => {
  it("streams a job's state at once, heartbeats while it waits, then each change to the final view, then ends", async () => {
    await Promise.all(fleet.workers.splice(0).map((w) => w.close()));
    const { sub, stream } = await (async () => {
      try {
        const sub = await call("POST", "/v1/jobs", "hooked", job({ custom_id: "sse-1" }));
        const stream = await openEvents(fleet.apiUrl, sub.json.id, "hooked");
        expect(stream.res.status, stream.refusal).toBe(200);
        expect(stream.res.headers.get("content-type")).toMatch(/^text\/event-stream/);
        await pollUntil("the first event", async () => stream.events.length > 0);
        expect(stream.events[0]).toMatchObject({
          event: "queued",
          data: { id: sub.json.id, status: "queued", custom_id: "sse-1" },
        });
        await pollUntil("a heartbeat", async () => stream.comments.includes(": keep-alive"));
        return { sub, stream };
      } finally {
        // The job runs now: the stream goes on to its final event.
        await fleet.startWorker();
      }
    })();
    await stream.done;
    const names = stream.events.map((e) => e.event);
    expect(names[0]).toBe("queued");
    expect(names.at(-1)).toBe("completed");
    expect(names.filter((n) => n === "completed")).toHaveLength(1);
    expect(["queued", "active", "completed"]).toEqual(expect.arrayContaining(names));
    // The final event is the job's view as GET shows it, result included.
    const view = await call("GET", `/v1/jobs/${sub.json.id}`, "hooked");
    expect(stream.events.at(-1)?.data).toEqual(view.json);
    expect(view.json.result.outputs.y.shape).toEqual([1, 4]);
    await pollUntil("the job's listeners to be released", async () => fleet.api.queues.watched().finals === 0);
  });

  it("ends a failing job's stream with its failed view", async () => {
    const sub = await call("POST", "/v1/jobs", "hooked", failing);
    const stream = await openEvents(fleet.apiUrl, sub.json.id, "hooked");
    expect(stream.res.status, stream.refusal).toBe(200);
    await stream.done;
    expect(stream.events.at(-1)).toMatchObject({
      event: "failed",
      data: { status: "failed", error: { code: "TIMEOUT" } },
    });
  });

  it("answers 404 for another tenant's job, as GET does", async () => {
    const sub = await call("POST", "/v1/jobs", "hooked", job());
    const r = await fetch(`${fleet.apiUrl}/v1/jobs/${sub.json.id}/events`, {
      headers: { authorization: `Bearer ${keys.other}` },
    });
    const body = await r.text();
    expect(r.status, body).toBe(404);
    expect(r.headers.get("content-type")).toMatch(/application\/json/);
    expect((JSON.parse(body) as Loose).error.code).toBe("JOB_NOT_FOUND");
  });

  it("bounds a stream by MAX_WAIT_MS and the streams a tenant holds, and lets go when the client leaves", async () => {
    // MAX_WAIT_MS is long enough that the first stream is surely still open when the second
    // request comes (on a loaded machine seconds may pass), and well short of the default
    // (30 s), so that a stream ending in time shows this bound was applied.
    const maxWaitMs = 10_000;
    const bounded = await startExtraApi(fleet, {
      WEBHOOK_NOTIFIER: "false",
      MAX_WAIT_MS: String(maxWaitMs),
      SSE_MAX_STREAMS_PER_TENANT: "1",
    });
    await Promise.all(fleet.workers.splice(0).map((w) => w.close()));
    const acFirst = new AbortController();
    const acLeft = new AbortController();
    try {
      const sub = await call("POST", "/v1/jobs", "hooked", job());
      // Past the longest wait the stream ends without a final event (an EventSource reconnects).
      const opened = Date.now();
      const first = await openEvents(bounded.url, sub.json.id, "hooked", acFirst.signal);
      expect(first.res.status, first.refusal).toBe(200);
      // Its headers came: it holds the tenant's only stream, so the next one is refused.
      const second = await fetch(`${bounded.url}/v1/jobs/${sub.json.id}/events`, {
        headers: { authorization: `Bearer ${keys.hooked}` },
      });
      const refused = await second.text();
      expect(second.status, refused).toBe(429);
      expect((JSON.parse(refused) as Loose).error.code).toBe("RATE_LIMITED");
      expect(first.ended()).toBe(false);
      await pollUntil("the first event", async () => first.events.length > 0);
      await first.done;
      const lasted = Date.now() - opened;
      expect(first.events.map((e) => e.event)).toEqual(["queued"]);
      // It ended on its own (not aborted), after MAX_WAIT_MS and well before the default would end it.
      expect(acFirst.signal.aborted).toBe(false);
      expect(lasted).toBeGreaterThanOrEqual(maxWaitMs - 500);
      expect(lasted).toBeLessThan(25_000);
      // A client that hangs up releases the job's listeners at once.
      const left = await openEvents(fleet.apiUrl, sub.json.id, "hooked", acLeft.signal);
      await pollUntil("the first event", async () => left.events.length > 0);
      expect(fleet.api.queues.watched().finals).toBeGreaterThan(0);
      acLeft.abort();
      await left.done;
      await pollUntil("the listeners to be released", async () => fleet.api.queues.watched().finals === 0);
      expect(fleet.api.queues.watched().actives).toBe(0);
    } finally {
      acFirst.abort();
      acLeft.abort();
      await bounded.close();
      await fleet.startWorker();
    }
  });
});

describe("webhook secrets", () => {
  it("rotates a tenant's secret: both sign during the grace, so receivers switch over without a gap", async () => {
    const rotated = await citadel("tenants", "webhook-secret", "hooked", "--rotate", "--grace-hours", "1");
    expect(rotated.code, rotated.err).toBe(0);
    expect(rotated.out).toMatch(/^whsec_/);
    expect(rotated.out).not.toBe(secrets.hooked);
    expect(rotated.err).toMatch(/previous secret also signs until/);
    // Printing it again gives the same (derived, not stored) secret.
    expect((await citadel("tenants", "webhook-secret", "hooked")).out).toBe(rotated.out);
    const sub = await call("POST", "/v1/jobs", "hooked", job());
    expect(sub.status, JSON.stringify(sub.json)).toBe(202);
    const [d] = await receiver.waitFor(
      "a notification after the rotation",
      () => receiver.about(sub.json.id),
      1,
      () => deliveryState(sub.json.id),
    );
    expect(String(d?.headers["webhook-signature"]).split(" ")).toHaveLength(2);
    expect(verifySignature(rotated.out, d?.headers ?? {}, d?.raw ?? "")).toBe(true);
    expect(verifySignature(secrets.hooked as string, d?.headers ?? {}, d?.raw ?? "")).toBe(true);
    // No secret is stored: the tenant's definition holds only the generation.
    const def = await fleet.redis.hget(`${fleet.prefix}:tenants:defs`, "hooked");
    expect(def).not.toContain(rotated.out.slice(6, 20));
    expect(JSON.parse(def ?? "{}").webhookSecret.generation).toBe(2);
    // Re-adding the tenant keeps its generation (the old secret does not come back).
    expect((await citadel("tenants", "add", "hooked", "--callback-url", receiver.url("/hooked"))).code).toBe(0);
    expect((await citadel("tenants", "webhook-secret", "hooked")).out).toBe(rotated.out);
    // No log line carries a secret.
    expect(fleet.logs.text).not.toContain(rotated.out.slice(6));
    expect(fleet.logs.text).not.toContain((secrets.hooked as string).slice(6));
  });
});
