import type { AuditRecord } from "@citadel/audit";
import { buildConvNet, buildIdentityModel } from "@citadel/onnx";
import { keys as queueKeys } from "@citadel/queue";
import { TenantStore } from "@citadel/tenants";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  errorEnvelope,
  inlineRefs,
  metricValue,
  pollUntil,
  publishModel,
  queueCounts,
  readAudit,
  startExtraApi,
} from "../support/api-kit.js";
import { startTestFleet, type TestFleet } from "../support/fleet.js";

// docs/contract.md#jobs end to end: every endpoint, idempotency, tenants and keys at run time, the
// abuse controls (rate limits, queue and quota bounds), audit records and shutdown.

const tiny = buildIdentityModel("float32", ["N", 4]);
const tinySpec = {
  maxBatch: 8,
  maxQueueDelayMs: 2,
  timeoutMs: 4000,
  inputs: { x: { range: [-10, 10] as [number, number] } },
};
const tinyJob = (model: string, rows = 1, v = 0.5) => ({
  model,
  inputs: { x: { dtype: "float32", shape: [rows, 4], data: Array.from({ length: rows * 4 }, () => v) } },
});
const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

async function auditWhere(fleet: TestFleet, what: string, pred: (r: AuditRecord) => boolean): Promise<AuditRecord> {
  return pollUntil(`audit record: ${what}`, async () => (await readAudit(fleet)).find(pred), 5000);
}

describe("with a worker", () => {
  let fleet: TestFleet;
  beforeAll(async () => {
    fleet = await startTestFleet({ workers: 1 });
    await publishModel(fleet, buildConvNet(), {
      name: "conv",
      version: "1",
      spec: { maxBatch: 16, maxQueueDelayMs: 2, inputs: { x: { range: [-10, 10] } } },
    });
    await publishModel(fleet, tiny, { name: "tiny", version: "1", spec: tinySpec });
  });
  afterAll(async () => {
    await fleet?.close();
  });

  it("accepts one job (202), long-polls it to completion and returns as soon as it is done", async () => {
    const sub = await fleet.request("POST", "/v1/jobs", tinyJob("tiny", 2, 1.5));
    expect(sub.status, JSON.stringify(sub.json)).toBe(202);
    expect(sub.json).toEqual({ id: expect.stringMatching(/^tiny\./), status: "queued", model: "tiny", version: "1" });
    const t0 = Date.now();
    const done = await fleet.request("GET", `/v1/jobs/${sub.json.id}?wait=30000`);
    const took = Date.now() - t0;
    expect(done.status).toBe(200);
    expect(done.json).toMatchObject({ id: sub.json.id, status: "completed", model: "tiny", version: "1" });
    expect(done.json.result.outputs.y.shape).toEqual([2, 4]);
    for (const k of ["createdAt", "startedAt", "finishedAt"]) expect(Date.parse(done.json[k])).toBeGreaterThan(0);
    // The wait was 30 s; the answer came when the job finished, not when the wait ended.
    expect(took).toBeLessThan(10_000);
    const acc = await auditWhere(fleet, "job.accepted", (r) => r.event === "job.accepted" && r.jobId === sub.json.id);
    expect(acc).toMatchObject({
      tenant: "acme",
      model: "tiny",
      version: "1",
      batchSize: 2,
      inputBytes: 32,
      outcome: "accepted",
    });
    expect(JSON.stringify(acc)).not.toContain("1.5");
  });

  it("answers health and readiness without an API key", async () => {
    const h = await fetch(`${fleet.apiUrl}/healthz`);
    expect([h.status, await h.json()]).toEqual([200, { ok: true }]);
    const r = await fetch(`${fleet.apiUrl}/readyz`);
    expect([r.status, await r.json()]).toEqual([200, { ok: true, redis: true, registry: true }]);
  });

  it("lists only the tenant's models, with specs and limits", async () => {
    const all = await fleet.request("GET", "/v1/models");
    expect(all.status).toBe(200);
    expect((all.json.models as { name: string }[]).map((m) => m.name).sort()).toEqual(["conv", "tiny"]);
    const key = await fleet.addTenant({ id: "only-tiny", models: ["tiny"] });
    const mine = await fleet.request("GET", "/v1/models", undefined, bearer(key));
    expect(mine.status).toBe(200);
    expect(mine.json.models).toHaveLength(1);
    const m = mine.json.models[0];
    expect(m).toMatchObject({ name: "tiny", stable: "1" });
    expect(m.versions).toHaveLength(1);
    expect(m.versions[0]).toMatchObject({
      version: "1",
      format: "onnx",
      maxBatch: 8,
      timeoutMs: 4000,
      inputs: [{ name: "x", dtype: "float32", shape: [null, 4], batchAxis: 0, range: [-10, 10] }],
      outputs: [{ name: "y", dtype: "float32", shape: [null, 4] }],
    });
    expect(m.versions[0].outputPolicy).toBeTypeOf("object");
    // A model the tenant may not use is refused (403), not silently routed.
    const f = await fleet.request("POST", "/v1/jobs", { model: "conv", inputs: {} }, bearer(key));
    expect([f.status, f.json.error.code]).toEqual([403, "FORBIDDEN"]);
  });

  it("serves an OpenAPI document with the /v1 paths and a browsable UI, outside tenant auth", async () => {
    const r = await fetch(`${fleet.apiUrl}/openapi.json`);
    expect(r.status).toBe(200);
    const doc = (await r.json()) as {
      openapi: string;
      paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: unknown }> } }>>;
    };
    expect(doc.openapi).toMatch(/^3\./);
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining(["/v1/jobs", "/v1/jobs/bulk", "/v1/jobs/{id}", "/v1/models"]),
    );
    expect(Object.keys(doc.paths["/v1/jobs/{id}"] ?? {}).sort()).toEqual(["delete", "get"]);
    // Generated from the zod schema the route validates with: the strict job body.
    const body = JSON.stringify(inlineRefs(doc, doc.paths["/v1/jobs"]?.post?.requestBody));
    for (const field of ["model", "inputs", "timeoutMs", "priority", "float32"]) expect(body).toContain(field);
    expect(body).toContain('"additionalProperties":false');
    const ui = await fetch(`${fleet.apiUrl}/docs`);
    expect(ui.status).toBe(200);
    expect(ui.headers.get("content-type")).toMatch(/text\/html/);
    expect(await ui.text()).toMatch(/swagger/i);
  });

  it("refuses a schema-invalid or malformed submit with 400 and audits and counts it", async () => {
    const bad = await fleet.request("POST", "/v1/jobs", { ...tinyJob("tiny"), colour: "red" });
    expect([bad.status, bad.json.error.code]).toEqual([400, "VALIDATION_FAILED"]);
    const junk = await fleet.request("POST", "/v1/jobs", '{"model":"tiny",');
    expect([junk.status, junk.json.error.code]).toEqual([400, "MALFORMED_JSON"]);
    const rid = bad.headers.get("request-id");
    const recs = await pollUntil("rejections audited", async () => {
      const rs = (await readAudit(fleet)).filter((r) => r.event === "job.rejected" && r.tenant === "acme");
      const codes = rs.map((r) => r.errorCode);
      return codes.includes("VALIDATION_FAILED") && codes.includes("MALFORMED_JSON") ? rs : undefined;
    });
    expect(recs.every((r) => r.outcome === "rejected" && typeof r.requestId === "string")).toBe(true);
    if (rid) expect(recs.some((r) => r.requestId === rid)).toBe(true);
    const m = await (await fetch(`${fleet.apiMetricsUrl}/metrics`)).text();
    expect(
      metricValue(m, "citadel_api_rejections_total", { tenant: "acme", reason: "VALIDATION_FAILED" }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      metricValue(m, "citadel_api_rejections_total", { tenant: "acme", reason: "MALFORMED_JSON" }),
    ).toBeGreaterThanOrEqual(1);
  });

  it("labels long-polls apart on /metrics, so the latency alert can leave them out", async () => {
    const submitted = await fleet.request("POST", "/v1/jobs?wait=5000", tinyJob("tiny"));
    expect([200, 202]).toContain(submitted.status);
    const id = String(submitted.json.id);
    expect((await fleet.request("GET", `/v1/jobs/${id}?wait=1000`)).status).toBe(200);
    expect((await fleet.request("GET", `/v1/jobs/${id}`)).status).toBe(200);
    const text = await (await fetch(`${fleet.apiMetricsUrl}/metrics`)).text();
    const count = (route: string, method: string) =>
      metricValue(text, "citadel_api_request_duration_seconds_count", { route, method });
    expect(count("/v1/jobs?wait", "POST")).toBeGreaterThanOrEqual(1);
    expect(count("/v1/jobs/:id?wait", "GET")).toBeGreaterThanOrEqual(1);
    expect(count("/v1/jobs/:id", "GET")).toBeGreaterThanOrEqual(1);
  });

  it("exposes rejections by tenant, model and reason on /metrics", async () => {
    const r = await fleet.request("POST", "/v1/jobs", {
      model: "tiny",
      inputs: { x: { dtype: "float32", shape: [1, 5], data: [1, 2, 3, 4, 5] } },
    });
    expect([r.status, r.json.error.code]).toEqual([422, "TENSOR_SHAPE_MISMATCH"]);
    expect(r.json.error.message).toMatch(/x/);
    expect((await fleet.request("GET", "/v1/models", undefined, { authorization: "Bearer ctd_nope" })).status).toBe(
      401,
    );
    const res = await fetch(`${fleet.apiMetricsUrl}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/text\/plain/);
    const text = await res.text();
    expect(
      metricValue(text, "citadel_api_rejections_total", {
        tenant: "acme",
        model: "tiny",
        reason: "TENSOR_SHAPE_MISMATCH",
      }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      metricValue(text, "citadel_api_rejections_total", { tenant: "", reason: "UNAUTHORIZED" }),
    ).toBeGreaterThanOrEqual(1);
    expect(metricValue(text, "citadel_jobs_accepted_total", { tenant: "acme", model: "tiny" })).toBeGreaterThanOrEqual(
      1,
    );
    expect(text).toMatch(/citadel_queue_pending_jobs\{[^}]*model="tiny"/);
    const denied = await auditWhere(
      fleet,
      "auth.denied",
      (a) => a.event === "auth.denied" && a.detail === "unknown key",
    );
    expect(JSON.stringify(denied)).not.toContain("ctd_nope");
  });

  it("applies keys added and revoked at run time without a restart", async () => {
    await fleet.addTenant({ id: "rotating", models: ["tiny"] });
    const store = new TenantStore(fleet.ctx.redis, fleet.prefix);
    const key = `ctd_${"k".repeat(20)}${Date.now()}`;
    // Unknown at first (and that answer is cached by the API)...
    expect((await fleet.request("GET", "/v1/models", undefined, bearer(key))).status).toBe(401);
    await store.addKey("rotating", key);
    const t0 = Date.now();
    await pollUntil(
      "added key accepted",
      async () => (await fleet.request("GET", "/v1/models", undefined, bearer(key))).status === 200,
      20_000,
    );
    const added = Date.now() - t0;
    expect(await store.revokeKey(key)).toBe(1);
    const t1 = Date.now();
    await pollUntil(
      "revoked key refused",
      async () => (await fleet.request("GET", "/v1/models", undefined, bearer(key))).status === 401,
      20_000,
    );
    const revoked = Date.now() - t1;
    // The API caches an authentication result for 2 s at most: a change shows within a few
    // seconds (the bound leaves room for a loaded machine), not only on a restart.
    expect(added).toBeLessThan(10_000);
    expect(revoked).toBeLessThan(10_000);
    const after = await fleet.request("POST", "/v1/jobs", tinyJob("tiny"), bearer(key));
    expect([after.status, after.json.error.code]).toEqual([401, "UNAUTHORIZED"]);
  });

  it("rate-limits a tenant: 429 RATE_LIMITED with Retry-After, audited", async () => {
    // A bucket that refills one request per 100 s: nothing refills it during the test.
    const key = await fleet.addTenant({ id: "slow", models: ["*"], requestRate: 0.01, requestBurst: 2 });
    const answers = [];
    for (let i = 0; i < 4; i++) answers.push(await fleet.request("GET", "/v1/models", undefined, bearer(key)));
    expect(answers.map((a) => a.status)).toEqual([200, 200, 429, 429]);
    const limited = answers[2];
    expect(limited?.json.error.code).toBe("RATE_LIMITED");
    expect(Number(limited?.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    await auditWhere(
      fleet,
      "tenant rate.limited",
      (r) => r.event === "rate.limited" && r.tenant === "slow" && r.detail === "requests",
    );
    const text = await (await fetch(`${fleet.apiMetricsUrl}/metrics`)).text();
    expect(
      metricValue(text, "citadel_api_rejections_total", { tenant: "slow", reason: "RATE_LIMITED" }),
    ).toBeGreaterThanOrEqual(2);
  });

  it("hides another tenant's job from status and cancel (404)", async () => {
    const sub = await fleet.request("POST", "/v1/jobs", tinyJob("tiny"));
    expect(sub.status).toBe(202);
    const other = await fleet.addTenant({ id: "nosy", models: ["*"] });
    const g = await fleet.request("GET", `/v1/jobs/${sub.json.id}`, undefined, bearer(other));
    const d = await fleet.request("DELETE", `/v1/jobs/${sub.json.id}`, undefined, bearer(other));
    expect([g.status, g.json.error.code, d.status, d.json.error.code]).toEqual([
      404,
      "JOB_NOT_FOUND",
      404,
      "JOB_NOT_FOUND",
    ]);
  });
});

describe("without workers (jobs stay queued)", () => {
  let fleet: TestFleet;
  const models = ["m-bulk", "m-idem", "m-depth", "m-quota", "m-wait", "m-cancel", "m-shed"] as const;
  beforeAll(async () => {
    fleet = await startTestFleet({ workers: 0, env: { MAX_QUEUE_DEPTH: "3" } });
    for (const name of models) await publishModel(fleet, tiny, { name, version: "1", spec: tinySpec });
  });
  afterAll(async () => {
    await fleet?.close();
  });

  it("answers a bulk submit item by item; only the valid items reach the queue", async () => {
    const before = await queueCounts(fleet, "m-bulk");
    const r = await fleet.request("POST", "/v1/jobs/bulk", {
      jobs: [
        tinyJob("m-bulk", 1),
        { ...tinyJob("m-bulk"), extra: true },
        { model: "m-bulk", inputs: { x: { dtype: "float32", shape: [1, 3], data: [1, 2, 3] } } },
        "not an object",
        tinyJob("m-bulk", 2),
        { model: "m-bulk", inputs: { x: { dtype: "float32", shape: [1, 4], data: [1, 2, 3, 11] } } },
        { model: "nope", inputs: { x: { dtype: "float32", shape: [1, 4], data: [1, 2, 3, 4] } } },
      ],
    });
    expect(r.status, JSON.stringify(r.json)).toBe(202);
    const items = r.json.jobs as {
      index: number;
      id?: string;
      status: unknown;
      error?: { code: string; message: string };
    }[];
    expect(items.map((i) => i.index)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(items.map((i) => (i.error ? [i.status, i.error.code] : i.status))).toEqual([
      "queued",
      [400, "VALIDATION_FAILED"],
      [422, "TENSOR_SHAPE_MISMATCH"],
      [400, "VALIDATION_FAILED"],
      "queued",
      [422, "TENSOR_OUT_OF_RANGE"],
      [404, "MODEL_NOT_FOUND"],
    ]);
    for (const i of items) if (i.error) expect(i.error.message.length).toBeGreaterThan(5);
    const after = await queueCounts(fleet, "m-bulk");
    expect(after.queued - before.queued).toBe(2);
    expect(after.total - before.total).toBe(2);
    for (const k of [0, 4]) {
      const v = await fleet.request("GET", `/v1/jobs/${items[k]?.id}`);
      expect([v.status, v.json.status]).toEqual([200, "queued"]);
    }
    // The five refused items are one audit record (a bulk of 500 bad items must not be 500
    // records): their count, their distinct codes and how many of each.
    const rec = await auditWhere(
      fleet,
      "the bulk's rejections",
      (a) => a.event === "job.rejected" && a.tenant === "acme" && a.count === 5,
    );
    expect(rec).toMatchObject({
      outcome: "rejected",
      errorCode: "MODEL_NOT_FOUND,TENSOR_OUT_OF_RANGE,TENSOR_SHAPE_MISMATCH,VALIDATION_FAILED",
      detail:
        "bulk items refused: MODEL_NOT_FOUND×1, TENSOR_OUT_OF_RANGE×1, TENSOR_SHAPE_MISMATCH×1, VALIDATION_FAILED×2",
    });
    expect(typeof rec.requestId).toBe("string");
  });

  it("returns the current state when the wait ends before the job does", async () => {
    const sub = await fleet.request("POST", "/v1/jobs", tinyJob("m-wait"));
    expect(sub.status).toBe(202);
    const t0 = Date.now();
    const r = await fleet.request("GET", `/v1/jobs/${sub.json.id}?wait=400`);
    const took = Date.now() - t0;
    expect([r.status, r.json.status]).toEqual([200, "queued"]);
    expect(took).toBeGreaterThanOrEqual(350);
    expect(took).toBeLessThan(5000);
    const tooLong = await fleet.request("GET", `/v1/jobs/${sub.json.id}?wait=999999999`);
    expect([tooLong.status, tooLong.json.error.code]).toEqual([400, "VALIDATION_FAILED"]);
  });

  it("returns the first job for a repeated Idempotency-Key and 409 for a different body", async () => {
    const before = await queueCounts(fleet, "m-idem");
    const h = { "idempotency-key": "order-42" };
    const a = await fleet.request("POST", "/v1/jobs", tinyJob("m-idem", 1, 1), h);
    const b = await fleet.request("POST", "/v1/jobs", tinyJob("m-idem", 1, 1), h);
    expect([a.status, b.status]).toEqual([202, 202]);
    expect(b.json.id).toBe(a.json.id);
    const c = await fleet.request("POST", "/v1/jobs", tinyJob("m-idem", 1, 2), h);
    expect([c.status, c.json.error.code]).toEqual([409, "IDEMPOTENCY_CONFLICT"]);
    // Concurrent retries of the same request still make one job.
    const burst = await Promise.all(
      Array.from({ length: 8 }, () =>
        fleet.request("POST", "/v1/jobs", tinyJob("m-idem", 1, 3), { "idempotency-key": "order-43" }),
      ),
    );
    expect(burst.every((x) => x.status === 202)).toBe(true);
    expect(new Set(burst.map((x) => x.json.id)).size).toBe(1);
    const after = await queueCounts(fleet, "m-idem");
    expect(after.total - before.total).toBe(2);
    // The same key from another tenant is another request.
    const other = await fleet.addTenant({ id: "idem-other", models: ["*"] });
    const d = await fleet.request("POST", "/v1/jobs", tinyJob("m-idem", 1, 1), { ...h, ...bearer(other) });
    expect(d.status).toBe(202);
    expect(d.json.id).not.toBe(a.json.id);
  });

  it("refuses with 503 QUEUE_FULL once a model's queue is at its depth bound, even in a burst", async () => {
    const answers = await Promise.all(
      Array.from({ length: 8 }, () => fleet.request("POST", "/v1/jobs", tinyJob("m-depth"))),
    );
    const ok = answers.filter((a) => a.status === 202);
    const full = answers.filter((a) => a.status === 503);
    expect(ok.length + full.length).toBe(8);
    expect(ok).toHaveLength(3);
    for (const f of full) {
      expect(f.json.error.code).toBe("QUEUE_FULL");
      expect(Number(f.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    }
    const again = await fleet.request("POST", "/v1/jobs", tinyJob("m-depth"));
    expect([again.status, again.json.error.code]).toEqual([503, "QUEUE_FULL"]);
    expect((await queueCounts(fleet, "m-depth")).total).toBe(3);
  });

  it("refuses with 429 QUOTA_EXCEEDED past the tenant's queued-job cap, even in a burst", async () => {
    const key = await fleet.addTenant({ id: "capped", models: ["*"], maxQueuedJobs: 2 });
    const answers = await Promise.all(
      Array.from({ length: 6 }, () => fleet.request("POST", "/v1/jobs", tinyJob("m-quota"), bearer(key))),
    );
    const ok = answers.filter((a) => a.status === 202);
    expect(ok).toHaveLength(2);
    for (const a of answers.filter((x) => x.status !== 202)) {
      expect([a.status, a.json.error.code]).toEqual([429, "QUOTA_EXCEEDED"]);
      expect(Number(a.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    }
    expect((await queueCounts(fleet, "m-quota")).total).toBe(2);
    // Cancelling a queued job gives its share of the quota back.
    const del = await fleet.request("DELETE", `/v1/jobs/${ok[0]?.json.id}`, undefined, bearer(key));
    expect([del.status, del.json.status]).toEqual([202, "cancelled"]);
    const next = await fleet.request("POST", "/v1/jobs", tinyJob("m-quota"), bearer(key));
    expect(next.status, JSON.stringify(next.json)).toBe(202);
    const over = await fleet.request("POST", "/v1/jobs", tinyJob("m-quota"), bearer(key));
    expect([over.status, over.json.error.code]).toEqual([429, "QUOTA_EXCEEDED"]);
    await auditWhere(
      fleet,
      "quota rejection",
      (r) => r.event === "job.rejected" && r.tenant === "capped" && r.errorCode === "QUOTA_EXCEEDED",
    );
  });

  it("rate-limits an IP address before authentication: 429 with Retry-After, audited", async () => {
    // IP_RATE is a whole number of requests a second: the bucket may refill while the test
    // runs on a slow machine, so it asks until it is refused, and bounds what got through.
    const api = await startExtraApi(fleet, { IP_RATE: "1", IP_BURST: "3" });
    try {
      const statuses: number[] = [];
      let last: Response | undefined;
      const started = Date.now();
      while (statuses.length < 60 && last?.status !== 429) {
        // No key at all: the per-IP limit must hold for unauthenticated clients too.
        last = await fetch(`${api.url}/v1/models`);
        statuses.push(last.status);
      }
      const elapsedS = (Date.now() - started) / 1000;
      // The burst first, then only 401s until the first 429, and no more than the burst and
      // the refill (1 a second) allowed.
      expect(statuses.slice(0, 3)).toEqual([401, 401, 401]);
      expect(statuses.at(-1)).toBe(429);
      expect(statuses.slice(0, -1).every((s) => s === 401)).toBe(true);
      expect(statuses.length - 1).toBeLessThanOrEqual(3 + Math.ceil(elapsedS) + 1);
      expect(errorEnvelope(await last?.json())?.code).toBe("RATE_LIMITED");
      expect(Number(last?.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      await auditWhere(
        fleet,
        "ip rate.limited",
        (r) => r.event === "rate.limited" && r.detail === "ip" && r.clientIp === "127.0.0.1",
      );
      await auditWhere(fleet, "auth.denied without a key", (r) => r.event === "auth.denied" && r.detail === "no key");
    } finally {
      await api.close();
    }
  });

  it("holds a long-poll past REQUEST_TIMEOUT_MS: the socket's idle timeout covers MAX_WAIT_MS", async () => {
    // A wait sends nothing until it ends; the socket idle timeout must not cut it (the
    // client would see the connection closed with no answer at all).
    const sub = await fleet.request("POST", "/v1/jobs", tinyJob("m-wait"));
    expect(sub.status).toBe(202);
    const api = await startExtraApi(fleet, { REQUEST_TIMEOUT_MS: "1000", MAX_WAIT_MS: "2500" });
    try {
      const get = await fetch(`${api.url}/v1/jobs/${sub.json.id}?wait=2500`, { headers: bearer(fleet.apiKey) });
      expect([get.status, ((await get.json()) as { status: string }).status]).toEqual([200, "queued"]);
      const post = await fetch(`${api.url}/v1/jobs?wait=2500`, {
        method: "POST",
        headers: { ...bearer(fleet.apiKey), "content-type": "application/json" },
        body: JSON.stringify(tinyJob("m-wait")),
      });
      expect(post.status).toBe(202);
      // m-wait's queue has a depth bound of 3 and later cases queue there too.
      const ids = [sub.json.id as string, ((await post.json()) as { id: string }).id];
      for (const id of ids) expect((await fleet.request("DELETE", `/v1/jobs/${id}`)).status).toBe(202);
    } finally {
      await api.close();
    }
  });

  it("sheds load while its event loop lags: 503 OVERLOADED with Retry-After, nothing queued, liveness still 200; serves again after", async () => {
    const api = await startExtraApi(fleet, { MAX_EVENT_LOOP_DELAY_MS: "100" });
    try {
      const post = () =>
        fetch(`${api.url}/v1/jobs`, {
          method: "POST",
          headers: { ...bearer(fleet.apiKey), "content-type": "application/json" },
          body: JSON.stringify(tinyJob("m-shed")),
        });
      const before = await queueCounts(fleet, "m-shed");
      // A lagging loop: 300 ms of work between turns (the lag is sampled every 100 ms, so
      // it is seen as about 200 ms), for over two of its 1 s windows and until the answers
      // come (the API answers between the chunks).
      let lagging = true;
      const lag = (async () => {
        while (lagging) {
          const chunk = Date.now();
          while (Date.now() - chunk < 300) {
            // busy: the loop takes no turn
          }
          await new Promise((r) => setImmediate(r));
        }
      })();
      await new Promise((r) => setTimeout(r, 2_200));
      const probe = (route: string) => fetch(`${api.url}${route}`);
      const [shed, ready, ...live] = await Promise.all([
        post(),
        probe("/readyz"),
        probe("/healthz"),
        probe("/v2/health/live"),
      ]).finally(() => {
        lagging = false;
      });
      await lag;
      // An overloaded API is not a dead one: its liveness probes are not shed (a restart
      // would move its load onto the others); readiness is (traffic goes elsewhere).
      expect(live.map((r) => r.status)).toEqual([200, 200]);
      expect([ready.status, errorEnvelope(await ready.json())?.code]).toEqual([503, "OVERLOADED"]);
      expect(shed.status).toBe(503);
      expect(errorEnvelope(await shed.json())?.code).toBe("OVERLOADED");
      expect(Number(shed.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(await queueCounts(fleet, "m-shed")).toEqual(before);
      // The next samples find the loop free again: the same request is taken.
      const taken = await pollUntil(
        "a submit taken after the lag",
        async () => {
          const r = await post();
          return r.status === 202 ? r : undefined;
        },
        30_000,
        100,
      );
      expect(taken.status).toBe(202);
    } finally {
      await api.close();
    }
  });

  it("answers an in-flight long-poll at once on shutdown, then stops accepting", async () => {
    const sub = await fleet.request("POST", "/v1/jobs", tinyJob("m-wait"));
    expect(sub.status).toBe(202);
    const api = await startExtraApi(fleet, { MAX_WAIT_MS: "60000" });
    const poll = fetch(`${api.url}/v1/jobs/${sub.json.id}?wait=60000`, { headers: bearer(fleet.apiKey) });
    // In its wait, not merely connected: a request still being read when the close
    // begins is answered 503 (the close refuses new requests), which is not this case.
    await pollUntil("long-poll in flight", async () => api.queues.watched().finals > 0);
    const t0 = Date.now();
    const closing = api.close();
    const res = await poll;
    // Answered with the job's state as a wait that ran out, not after its 60 s: a
    // shutdown is not held (nor a pod's grace period spent) by its longest long-poll.
    expect(Date.now() - t0).toBeLessThan(30_000);
    expect(res.status).toBe(200);
    expect(((await res.json()) as { status: string }).status).toBe("queued");
    await expect(closing).resolves.toBeUndefined();
    await expect(fetch(`${api.url}/healthz`)).rejects.toThrow();
  });

  it("cancels a queued job: it ends cancelled and is never run, while the others are", async () => {
    const a = await fleet.request("POST", "/v1/jobs", tinyJob("m-cancel"));
    const b = await fleet.request("POST", "/v1/jobs", tinyJob("m-cancel"));
    expect([a.status, b.status]).toEqual([202, 202]);
    const del = await fleet.request("DELETE", `/v1/jobs/${a.json.id}`);
    expect([del.status, del.json]).toEqual([202, { id: a.json.id, status: "cancelled" }]);
    const again = await fleet.request("DELETE", `/v1/jobs/${a.json.id}`);
    expect([again.status, again.json.status]).toEqual([202, "cancelled"]);
    expect((await queueCounts(fleet, "m-cancel")).total).toBe(1);
    // The cancelled job's input bytes went with it; the other's wait for its run.
    const inputsOf = (id: string) => fleet.redis.exists(queueKeys.inputs(fleet.prefix, "m-cancel", id));
    expect([await inputsOf(a.json.id), await inputsOf(b.json.id)]).toEqual([0, 1]);
    await auditWhere(fleet, "job.cancelled", (r) => r.event === "job.cancelled" && r.jobId === a.json.id);
    // Long-poll the other job, then start a worker: the poll returns when it completes,
    // before its own 30 s wait is over (a poll that ran out would answer "queued").
    const t0 = Date.now();
    const waiting = fleet.request("GET", `/v1/jobs/${b.json.id}?wait=30000`);
    await fleet.startWorker();
    const done = await waiting;
    expect([done.status, done.json.status]).toEqual([200, "completed"]);
    expect(Date.now() - t0).toBeLessThan(30_000);
    expect(await inputsOf(b.json.id)).toBe(0);
    const view = await fleet.request("GET", `/v1/jobs/${a.json.id}`);
    expect(view.status).toBe(200);
    expect(view.json).toMatchObject({ id: a.json.id, status: "cancelled", model: "m-cancel" });
    expect(view.json.startedAt).toBeUndefined();
    const audit = await readAudit(fleet);
    expect(audit.some((r) => r.jobId === a.json.id && r.event === "job.completed")).toBe(false);
    expect(audit.some((r) => r.jobId === b.json.id && r.event === "job.completed")).toBe(true);
  });
});
