import type { AuditRecord } from "@citadel/audit";
import { buildIdentityModel } from "@citadel/onnx";
import { TenantStore } from "@citadel/tenants";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { metricValue, pollUntil, publishModel, queueCounts, readAudit, startExtraApi } from "../support/api-kit.js";
import { startTestFleet, type TestFleet } from "../support/fleet.js";

// Issue 10, the API's half: a tenant's own limits (timeout floor, high priority as a
// right, the sample burst as a hard bound), job ids naming made-up models, and floods
// of refused requests that must not flood the audit stream.

const tiny = buildIdentityModel("float32", ["N", 4]);
const spec = (timeoutMs: number) => ({
  maxBatch: 32,
  maxQueueDelayMs: 2,
  timeoutMs,
  inputs: { x: { range: [-10, 10] as [number, number] } },
});
const job = (model: string, rows = 1, extra: Record<string, unknown> = {}) => ({
  model,
  inputs: { x: { dtype: "float32", shape: [rows, 4], data: Array.from({ length: rows * 4 }, () => 0.5) } },
  ...extra,
});
const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

let fleet: TestFleet;

beforeAll(async () => {
  // No workers: accepted jobs stay queued and can be counted exactly.
  fleet = await startTestFleet({ workers: 0 });
  await publishModel(fleet, tiny, { name: "ab-tiny", version: "1", spec: spec(4000) });
  // A manifest whose own timeout is below the API's floor (100 ms by default).
  await publishModel(fleet, tiny, { name: "ab-quick", version: "1", spec: spec(60) });
});
afterAll(async () => {
  await fleet?.close();
});

async function metrics(url = fleet.apiMetricsUrl): Promise<string> {
  return (await fetch(`${url}/metrics`)).text();
}

describe("a job's timeout and priority (issue 10 point 2)", () => {
  it("refuses a timeoutMs below the floor with 422 TIMEOUT_TOO_SMALL; the floor never exceeds the manifest's timeout", async () => {
    const low = await fleet.request("POST", "/v1/jobs", job("ab-tiny", 1, { timeoutMs: 1 }));
    expect([low.status, low.json.error?.code]).toEqual([422, "TIMEOUT_TOO_SMALL"]);
    expect(low.json.error.details).toEqual({ min: 100 });
    expect(low.json.error.message).toMatch(/100/);
    const under = await fleet.request("POST", "/v1/jobs", job("ab-tiny", 1, { timeoutMs: 99 }));
    expect([under.status, under.json.error?.code]).toEqual([422, "TIMEOUT_TOO_SMALL"]);
    const at = await fleet.request("POST", "/v1/jobs", job("ab-tiny", 1, { timeoutMs: 100 }));
    expect(at.status, JSON.stringify(at.json)).toBe(202);
    // ab-quick's manifest allows 60 ms at most: the floor is 60 there, so 60 is valid.
    const quick = await fleet.request("POST", "/v1/jobs", job("ab-quick", 1, { timeoutMs: 60 }));
    expect(quick.status, JSON.stringify(quick.json)).toBe(202);
    const quickLow = await fleet.request("POST", "/v1/jobs", job("ab-quick", 1, { timeoutMs: 59 }));
    expect([quickLow.status, quickLow.json.error?.code, quickLow.json.error?.details]).toEqual([
      422,
      "TIMEOUT_TOO_SMALL",
      { min: 60 },
    ]);
    // In a bulk, the item answers for itself.
    const bulk = await fleet.request("POST", "/v1/jobs/bulk", {
      jobs: [job("ab-tiny", 1, { timeoutMs: 5 }), job("ab-tiny", 1)],
    });
    expect(bulk.status).toBe(202);
    expect(bulk.json.jobs.map((j: { status: unknown }) => j.status)).toEqual([422, "queued"]);
    expect(bulk.json.jobs[0].error.code).toBe("TIMEOUT_TOO_SMALL");
  });

  it("makes high priority a per-tenant right, off by default: 403 without it, accepted with it", async () => {
    const before = await queueCounts(fleet, "ab-tiny");
    const plain = await fleet.addTenant({ id: "plain", models: ["*"] });
    const refused = await fleet.request("POST", "/v1/jobs", job("ab-tiny", 1, { priority: "high" }), bearer(plain));
    expect([refused.status, refused.json.error?.code]).toEqual([403, "FORBIDDEN"]);
    expect(refused.json.error.message).toMatch(/high/);
    const bulk = await fleet.request(
      "POST",
      "/v1/jobs/bulk",
      { jobs: [job("ab-tiny", 1, { priority: "high" }), job("ab-tiny", 1, { priority: "low" })] },
      bearer(plain),
    );
    expect(bulk.json.jobs.map((j: { status: unknown }) => j.status)).toEqual([403, "queued"]);
    const normal = await fleet.request("POST", "/v1/jobs", job("ab-tiny", 1, { priority: "normal" }), bearer(plain));
    expect(normal.status).toBe(202);
    const vip = await fleet.addTenant({ id: "vip", models: ["*"], allowHighPriority: true });
    const ok = await fleet.request("POST", "/v1/jobs", job("ab-tiny", 1, { priority: "high" }), bearer(vip));
    expect(ok.status, JSON.stringify(ok.json)).toBe(202);
    // Only the three permitted jobs were queued.
    expect((await queueCounts(fleet, "ab-tiny")).total - before.total).toBe(3);
    // The right is stored with the tenant and defaults to off.
    const store = new TenantStore(fleet.redis, fleet.prefix);
    expect((await store.get("plain"))?.allowHighPriority).toBe(false);
    expect((await store.get("vip"))?.allowHighPriority).toBe(true);
  });
});

describe("the sample-rate limit (issue 10 point 4)", () => {
  // A rate so low that the bucket does not refill during the test: only the burst counts.
  const limited = (id: string) => fleet.addTenant({ id, models: ["*"], sampleRate: 0.001, sampleBurst: 10 });

  it("refuses a bulk whose samples exceed the burst as a whole (429, nothing queued, bucket untouched)", async () => {
    const key = await limited("bulk-burst");
    const before = await queueCounts(fleet, "ab-tiny");
    const over = await fleet.request(
      "POST",
      "/v1/jobs/bulk",
      { jobs: Array.from({ length: 11 }, () => job("ab-tiny")) },
      bearer(key),
    );
    expect([over.status, over.json.error?.code]).toEqual([429, "RATE_LIMITED"]);
    expect(over.json.error.message).toMatch(/burst/);
    expect(over.json.error.details).toMatchObject({ scope: "samples", samples: 11, burst: 10 });
    // Waiting cannot make this request fit: no Retry-After promising otherwise.
    expect(over.headers.get("retry-after")).toBeNull();
    expect((await queueCounts(fleet, "ab-tiny")).total).toBe(before.total);
    // The refused request was not charged: the whole burst is still there.
    const fits = await fleet.request(
      "POST",
      "/v1/jobs/bulk",
      { jobs: Array.from({ length: 10 }, () => job("ab-tiny")) },
      bearer(key),
    );
    expect(fits.status).toBe(202);
    expect(fits.json.jobs.every((j: { status: unknown }) => j.status === "queued")).toBe(true);
    expect((await queueCounts(fleet, "ab-tiny")).total - before.total).toBe(10);
  });

  it("refuses one job whose batch alone exceeds the burst", async () => {
    const key = await limited("job-burst");
    const before = await queueCounts(fleet, "ab-tiny");
    const big = await fleet.request("POST", "/v1/jobs", job("ab-tiny", 12), bearer(key));
    expect([big.status, big.json.error?.code]).toEqual([429, "RATE_LIMITED"]);
    expect(big.json.error.details).toMatchObject({ scope: "samples", samples: 12, burst: 10 });
    expect(big.headers.get("retry-after")).toBeNull();
    expect((await queueCounts(fleet, "ab-tiny")).total).toBe(before.total);
    const fits = await fleet.request("POST", "/v1/jobs", job("ab-tiny", 10), bearer(key));
    expect(fits.status, JSON.stringify(fits.json)).toBe(202);
  });

  it("accepts requests within the burst until it is spent, then 429 with Retry-After; counts samples per tenant", async () => {
    const key = await limited("samples-seq");
    const a = await fleet.request("POST", "/v1/jobs", job("ab-tiny", 4), bearer(key));
    const b = await fleet.request(
      "POST",
      "/v1/jobs/bulk",
      { jobs: [job("ab-tiny", 3), job("ab-tiny", 2), job("ab-tiny", 1)] },
      bearer(key),
    );
    expect([a.status, b.status]).toEqual([202, 202]);
    expect(b.json.jobs.every((j: { status: unknown }) => j.status === "queued")).toBe(true);
    const spent = await fleet.request("POST", "/v1/jobs", job("ab-tiny", 1), bearer(key));
    expect([spent.status, spent.json.error?.code]).toEqual([429, "RATE_LIMITED"]);
    expect(Number(spent.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    const text = await metrics();
    expect(metricValue(text, "citadel_api_samples_total", { tenant: "samples-seq", model: "ab-tiny" })).toBe(10);
    expect(metricValue(text, "citadel_jobs_accepted_total", { tenant: "samples-seq", model: "ab-tiny" })).toBe(4);
  });
});

describe("job ids naming models that are not published (issue 10 point 9)", () => {
  it("answers 404 JOB_NOT_FOUND and creates no queue or listener for made-up model names", async () => {
    const sub = await fleet.request("POST", "/v1/jobs", job("ab-tiny"));
    expect(sub.status).toBe(202);
    // A real job's id with another model name in front is as unknown as any other id.
    const random = String(sub.json.id).split(".")[1];
    const before = fleet.api.queues.cached();
    for (let i = 0; i < 150; i++) {
      const id = `ghost-${i}.${random}`;
      const g = await fleet.request("GET", `/v1/jobs/${id}?wait=${i % 2 ? 0 : 50}`);
      const d = await fleet.request("DELETE", `/v1/jobs/${id}`);
      expect([g.status, g.json.error?.code, d.status, d.json.error?.code]).toEqual([
        404,
        "JOB_NOT_FOUND",
        404,
        "JOB_NOT_FOUND",
      ]);
    }
    expect(fleet.api.queues.cached()).toEqual(before);
    expect(before.queues).toBeLessThanOrEqual(2);
    // The published model's job is still found.
    const v = await fleet.request("GET", `/v1/jobs/${sub.json.id}`);
    expect([v.status, v.json.status]).toEqual([200, "queued"]);
  });

  it("closes the queue and listener of a model taken out of the registry", async () => {
    await publishModel(fleet, tiny, { name: "ab-gone", version: "1", spec: spec(4000) });
    const sub = await fleet.request("POST", "/v1/jobs", job("ab-gone"));
    expect(sub.status).toBe(202);
    // A long-poll opens the model's QueueEvents (its own Redis connection).
    const poll = await fleet.request("GET", `/v1/jobs/${sub.json.id}?wait=100`);
    expect([poll.status, poll.json.status]).toEqual([200, "queued"]);
    const held = fleet.api.queues.cached();
    expect(held.events).toBeGreaterThanOrEqual(1);
    // An operator takes the model out (no CLI verb does this yet): registry keys gone, change announced.
    const p = fleet.prefix;
    await fleet.redis
      .multi()
      .srem(`${p}:registry:models`, "ab-gone")
      .hdel(`${p}:registry:routing`, "ab-gone")
      .del(`${p}:registry:manifests:ab-gone`)
      .publish(`${p}:registry:changed`, JSON.stringify({ name: "ab-gone" }))
      .exec();
    const after = await pollUntil("the model's queue handles to be closed", async () => {
      const c = fleet.api.queues.cached();
      return c.queues === held.queues - 1 && c.events === held.events - 1 ? c : undefined;
    });
    expect(after.queues).toBe(held.queues - 1);
    const g = await fleet.request("GET", `/v1/jobs/${sub.json.id}`);
    expect([g.status, g.json.error?.code]).toEqual([404, "JOB_NOT_FOUND"]);
    expect(fleet.api.queues.cached()).toEqual(after);
  });
});

describe("refusals do not flood the audit stream (issue 10 point 10)", () => {
  const from = (ip: string, headers: Record<string, string> = {}) => ({ "x-forwarded-for": ip, ...headers });
  const countOf = (rs: AuditRecord[]) => rs.reduce((a, r) => a + (r.count ?? 1), 0);

  it("aggregates a flood of unauthenticated requests from one address into O(1) records whose counts sum to N", async () => {
    const ip = "198.51.100.7";
    const n = 300;
    const api = await startExtraApi(fleet, { TRUST_PROXY_HOPS: "1", AUDIT_DENIAL_WINDOW_MS: "600000" });
    let closed = false;
    try {
      const statuses = new Map<number, number>();
      for (let i = 0; i < n; i++) {
        const r = await fetch(`${api.url}/v1/models`, {
          headers: from(ip, i % 2 ? { authorization: "Bearer ctd_not-a-key" } : {}),
        });
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      }
      expect(Object.fromEntries(statuses)).toEqual({ 401: n });
      // The first denial of the window is recorded at once, with its request id.
      const first = await pollUntil("the first denial's record", async () => {
        const rs = (await readAudit(fleet)).filter((r) => r.event === "auth.denied" && r.clientIp === ip);
        return rs.length >= 2 ? rs : undefined;
      });
      expect(first.every((r) => r.count === 1 && typeof r.requestId === "string")).toBe(true);
      await api.close();
      closed = true;
      // Shutdown flushes the window: one more record per (address, reason), carrying the rest.
      const rs = (await readAudit(fleet)).filter((r) => r.event === "auth.denied" && r.clientIp === ip);
      expect(rs.length).toBeLessThanOrEqual(4);
      expect(countOf(rs)).toBe(n);
      expect(countOf(rs.filter((r) => r.detail === "no key"))).toBe(n / 2);
      expect(countOf(rs.filter((r) => r.detail === "unknown key"))).toBe(n / 2);
      expect(JSON.stringify(rs)).not.toContain("ctd_not-a-key");
    } finally {
      if (!closed) await api.close();
    }
  });

  it("aggregates rate-limited requests per address and tenant the same way", async () => {
    const ip = "198.51.100.8";
    const n = 200;
    const api = await startExtraApi(fleet, {
      TRUST_PROXY_HOPS: "1",
      AUDIT_DENIAL_WINDOW_MS: "600000",
      IP_RATE: "1",
      IP_BURST: "5",
    });
    let closed = false;
    try {
      let limitedIp = 0;
      for (let i = 0; i < n; i++) {
        const r = await fetch(`${api.url}/v1/models`, { headers: from(ip) });
        if (r.status === 429) limitedIp++;
      }
      expect(limitedIp).toBeGreaterThan(n / 2);
      await api.close();
      closed = true;
      const all = (await readAudit(fleet)).filter((r) => r.clientIp === ip);
      const limited = all.filter((r) => r.event === "rate.limited");
      const denied = all.filter((r) => r.event === "auth.denied");
      expect(limited.length).toBeLessThanOrEqual(2);
      expect(denied.length).toBeLessThanOrEqual(2);
      expect(countOf(limited)).toBe(limitedIp);
      expect(countOf(limited) + countOf(denied)).toBe(n);
      expect(limited.every((r) => r.detail === "ip")).toBe(true);
    } finally {
      if (!closed) await api.close();
    }
  });

  it("bounds what it tracks: a flood from many addresses folds the overflow into one record", async () => {
    const ips = Array.from({ length: 40 }, (_, i) => `203.0.113.${i + 1}`);
    const api = await startExtraApi(fleet, {
      TRUST_PROXY_HOPS: "1",
      AUDIT_DENIAL_WINDOW_MS: "600000",
      AUDIT_DENIAL_MAX_SOURCES: "5",
    });
    let closed = false;
    try {
      for (const ip of ips) for (let k = 0; k < 3; k++) await fetch(`${api.url}/v1/models`, { headers: from(ip) });
      await api.close();
      closed = true;
      const all = await readAudit(fleet);
      const tracked = all.filter((r) => r.event === "auth.denied" && ips.includes(r.clientIp ?? ""));
      const writers = new Set(tracked.map((r) => r.writer));
      expect(writers.size).toBe(1);
      const overflow = all.filter(
        (r) => r.event === "auth.denied" && writers.has(r.writer) && r.clientIp === undefined,
      );
      expect(new Set(tracked.map((r) => r.clientIp)).size).toBe(5);
      expect(tracked.length).toBeLessThanOrEqual(10);
      expect(overflow).toHaveLength(1);
      expect(overflow[0]?.detail).toMatch(/sources/);
      expect(countOf(tracked) + countOf(overflow)).toBe(ips.length * 3);
    } finally {
      if (!closed) await api.close();
    }
  });

  it("writes one job.rejected record for a bulk's refused items, with their count and codes", async () => {
    const key = await fleet.addTenant({ id: "bulk-rejects", models: ["*"] });
    const bad = { model: "ab-tiny", inputs: { x: { dtype: "float32", shape: [1, 3], data: [1, 2, 3] } } };
    const r = await fleet.request(
      "POST",
      "/v1/jobs/bulk",
      {
        jobs: [
          ...Array.from({ length: 30 }, () => bad),
          { ...job("ab-tiny"), colour: "red" },
          { model: "nope", inputs: {} },
          job("ab-tiny"),
        ],
      },
      bearer(key),
    );
    expect(r.status).toBe(202);
    expect(r.json.jobs.filter((j: { error?: unknown }) => j.error)).toHaveLength(32);
    const recs = await pollUntil("the bulk's rejection record", async () => {
      const rs = (await readAudit(fleet)).filter((a) => a.event === "job.rejected" && a.tenant === "bulk-rejects");
      return rs.length > 0 ? rs : undefined;
    });
    // Give a per-item writer time to show itself, then count.
    await pollUntil("the accepted item's record", async () =>
      (await readAudit(fleet)).some((a) => a.event === "job.accepted" && a.tenant === "bulk-rejects"),
    );
    const all = (await readAudit(fleet)).filter((a) => a.event === "job.rejected" && a.tenant === "bulk-rejects");
    expect(all).toHaveLength(1);
    expect(recs[0]).toMatchObject({ count: 32, outcome: "rejected" });
    expect(String(recs[0]?.errorCode).split(",").sort()).toEqual([
      "MODEL_NOT_FOUND",
      "TENSOR_SHAPE_MISMATCH",
      "VALIDATION_FAILED",
    ]);
    expect(recs[0]?.detail).toMatch(/TENSOR_SHAPE_MISMATCH×30/);
    // Metrics still count every refused item.
    const text = await metrics();
    expect(
      metricValue(text, "citadel_api_rejections_total", { tenant: "bulk-rejects", reason: "TENSOR_SHAPE_MISMATCH" }),
    ).toBe(30);
  });
});
