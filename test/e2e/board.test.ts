import { existsSync } from "node:fs";
import { buildIdentityModel } from "@citadel/onnx";
import { type Browser, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  BOARD_ADMIN,
  BOARD_OPS,
  metricValue,
  pollUntil,
  publishModel,
  readAudit,
  startExtraApi,
} from "../support/api-kit.js";
import { startTestFleet, type TestFleet } from "../support/fleet.js";

// Bull Board at /admin/queues (docs/operations.md, issue 4 point 5), driven by a real headless
// Chromium: refused without credentials (page and static assets), loads with the
// admin's, shows the model queues, never shows tensor data, read-only for ops.

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const MODELS = ["board-a", "board-b"] as const;
/** A value that cannot appear in a page by chance: its float32 bytes in base64 are the secret. */
const SECRET_VALUE = 7.123456;
const secretF32 = new Float32Array(8).fill(SECRET_VALUE);
const secretB64 = Buffer.from(secretF32.buffer).toString("base64");

let fleet: TestFleet;
let browser: Browser;
let jobId = "";

const basic = (c: { username: string; password: string }) =>
  `Basic ${Buffer.from(`${c.username}:${c.password}`).toString("base64")}`;
const board = (p = "") => `${fleet.apiUrl}/admin/queues${p}`;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `Chromium not found at ${CHROMIUM}: the board test needs Debian's chromium package (apt-get install -y chromium) or CHROMIUM_PATH`,
    );
  }
  // The tests below send many wrong credentials on purpose (every asset, every browser
  // case): a login limit high enough for them; the limit itself is tested on its own API.
  fleet = await startTestFleet({ workers: 0, env: { BOARD_LOGIN_BURST: "1000" } });
  for (const name of MODELS) {
    await publishModel(fleet, buildIdentityModel("float32", ["N", 4]), { name, version: "1", spec: { maxBatch: 8 } });
  }
  const sub = await fleet.request("POST", "/v1/jobs", {
    model: "board-a",
    inputs: { x: { dtype: "float32", shape: [2, 4], data: secretB64 } },
  });
  expect(sub.status, JSON.stringify(sub.json)).toBe(202);
  jobId = sub.json.id;
  // launch() gives the browser a fresh temporary profile (user-data-dir) of its own.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});
afterAll(async () => {
  await browser?.close();
  await fleet?.close();
});

/** Every static asset the board's HTML references (scripts, styles, icons). */
async function assetPaths(): Promise<string[]> {
  const html = await (await fetch(board(), { headers: { authorization: basic(BOARD_ADMIN) } })).text();
  const found = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1] ?? "");
  return found.filter((u) => u.includes("/static/") || /\.(js|css|png|svg|ico)$/.test(u));
}

describe("Bull Board", () => {
  it("refuses the page, its API and its static assets without credentials (401 + WWW-Authenticate)", async () => {
    const assets = await assetPaths();
    expect(assets.length).toBeGreaterThan(0);
    const targets = [board(), board("/"), board("/api/queues"), ...assets.map((a) => new URL(a, board("/")).href)];
    for (const url of targets) {
      for (const authorization of [
        undefined,
        basic({ username: "admin", password: "wrong-password" }),
        `Bearer ${fleet.apiKey}`,
      ]) {
        const r = await fetch(url, { headers: authorization ? { authorization } : {} });
        expect(r.status, `${url} with ${authorization?.split(" ")[0] ?? "nothing"}`).toBe(401);
        expect(r.headers.get("www-authenticate")).toMatch(/^Basic realm=/);
        expect(await r.text()).not.toContain(secretB64);
      }
    }
    // The same assets load with the admin's credentials.
    for (const a of assets) {
      const r = await fetch(new URL(a, board("/")).href, { headers: { authorization: basic(BOARD_ADMIN) } });
      expect(r.status, a).toBe(200);
    }
  });

  it("is refused in a browser without credentials or with wrong ones", async () => {
    for (const creds of [
      undefined,
      { username: "admin", password: "not-the-password" },
      { ...BOARD_OPS, username: "admin" },
    ]) {
      const context = await browser.newContext(creds ? { httpCredentials: creds } : {});
      try {
        const page = await context.newPage();
        const statuses: number[] = [];
        page.on("response", (r) => {
          if (r.url().startsWith(board())) statuses.push(r.status());
        });
        // Chromium answers the Basic challenge it cannot meet by failing the navigation.
        const nav = await page.goto(board(), { waitUntil: "domcontentloaded" }).then(
          (r) => r?.status() ?? 0,
          (err: unknown) => String(err),
        );
        if (typeof nav === "number") expect(nav).toBe(401);
        else expect(nav).toMatch(/ERR_INVALID_AUTH_CREDENTIALS|401/);
        // Nothing under /admin/queues (page, assets, API) was served to this browser.
        expect(statuses.length).toBeGreaterThan(0);
        expect(statuses.every((st) => st === 401)).toBe(true);
      } finally {
        await context.close();
      }
    }
  });

  it("loads with admin credentials, shows the model queues and never the tensor data", async () => {
    const context = await browser.newContext({ httpCredentials: BOARD_ADMIN });
    const apiBodies: string[] = [];
    const pending: Promise<void>[] = [];
    try {
      const page = await context.newPage();
      page.on("response", (r) => {
        if (!r.url().includes("/admin/queues/api/")) return;
        pending.push(
          r.text().then(
            (t) => void apiBodies.push(t),
            () => undefined,
          ),
        );
      });
      const res = await page.goto(board(), { waitUntil: "domcontentloaded" });
      expect(res?.status()).toBe(200);
      for (const m of MODELS) await page.getByText(`infer-${m}`).first().waitFor({ timeout: 20_000 });
      // Open the queue holding the job, as an operator would, and let the UI fetch it.
      await page.goto(board(`/queue/infer-board-a?status=prioritized`), { waitUntil: "domcontentloaded" });
      await pollUntil(
        "the board's UI to fetch the queued job",
        async () => {
          await Promise.all(pending);
          return apiBodies.some((b) => b.includes(jobId));
        },
        20_000,
        100,
      );
      const text = (await page.locator("body").textContent()) ?? "";
      expect(text).toContain("infer-board-a");
      const seen = [...apiBodies, await page.content()];
      for (const body of seen) {
        expect(body).not.toContain(secretB64);
        expect(body).not.toContain(secretB64.slice(0, 12));
        expect(body).not.toContain(String(SECRET_VALUE));
        expect(body).not.toContain("clientIp");
      }
      expect(apiBodies.some((b) => b.includes("[redacted]"))).toBe(true);
    } finally {
      await context.close();
    }
  });

  it("redacts the job in every board API answer that carries it", async () => {
    const auth = { authorization: basic(BOARD_ADMIN) };
    for (const p of [
      "/api/queues?activeQueue=infer-board-a&status=prioritized&page=1&jobsPerPage=50",
      "/api/queues?activeQueue=infer-board-a&status=latest",
      `/api/queues/infer-board-a/${jobId}`,
    ]) {
      const r = await fetch(board(p), { headers: auth });
      expect(r.status, p).toBe(200);
      const text = await r.text();
      expect(text, p).toContain(jobId);
      expect(text, p).not.toContain(secretB64);
      expect(text, p).not.toContain(secretB64.slice(0, 12));
      expect(text, p).toContain("[redacted]");
    }
  });

  it("lets the ops role read but answers 405 to every mutating call; the admin may mutate", async () => {
    const ops = { authorization: basic(BOARD_OPS) };
    expect((await fetch(board("/api/queues"), { headers: ops })).status).toBe(200);
    const mutations: [string, string][] = [
      ["PUT", "/api/queues/infer-board-a/retry/failed"],
      ["PUT", "/api/queues/infer-board-a/clean/completed"],
      ["PUT", "/api/queues/pause"],
      ["PUT", `/api/queues/infer-board-a/${jobId}/promote`],
      ["PUT", `/api/queues/infer-board-a/${jobId}/clean`],
      ["PATCH", `/api/queues/infer-board-a/${jobId}/update-data`],
      ["PUT", "/api/queues/infer-board-a/obliterate"],
      ["POST", "/api/queues/infer-board-a/add"],
    ];
    for (const [method, p] of mutations) {
      const r = await fetch(board(p), { method, headers: { ...ops, "content-type": "application/json" }, body: "{}" });
      expect(r.status, `${method} ${p}`).toBe(405);
    }
    // The job is untouched by the refused calls.
    const v = await fleet.request("GET", `/v1/jobs/${jobId}`);
    expect([v.status, v.json.status]).toEqual([200, "queued"]);
    const admin = await fetch(board("/api/queues/infer-board-b/clean/completed"), {
      method: "PUT",
      headers: { authorization: basic(BOARD_ADMIN) },
    });
    expect(admin.status).toBeLessThan(300);
  });

  it("keeps the board and the OpenAPI document outside tenant auth", async () => {
    // A tenant key opens neither the board (its own Basic auth) ...
    expect((await fetch(board(), { headers: { authorization: `Bearer ${fleet.apiKey}` } })).status).toBe(401);
    // ... nor is one needed for the public API description.
    expect((await fetch(`${fleet.apiUrl}/openapi.json`)).status).toBe(200);
    // Board credentials are not API keys.
    const r = await fetch(`${fleet.apiUrl}/v1/models`, { headers: { authorization: basic(BOARD_ADMIN) } });
    expect(r.status).toBe(401);
  });

  it("rate-limits failed logins per address: 429 without checking the password; denials counted, audited once per window", async () => {
    const api = await startExtraApi(fleet, {
      BOARD_LOGIN_BURST: "3",
      BOARD_LOGIN_PER_MINUTE: "1",
      TRUST_PROXY_HOPS: "1",
      AUDIT_DENIAL_WINDOW_MS: "600000",
    });
    let closed = false;
    try {
      const attacker = "192.0.2.66";
      const get = (creds: { username: string; password: string } | null, ip: string) =>
        fetch(`${api.url}/admin/queues/api/queues`, {
          headers: { "x-forwarded-for": ip, ...(creds ? { authorization: basic(creds) } : {}) },
        });
      const wrong = { username: "admin", password: "guess-number-one" };
      const statuses: number[] = [];
      for (let i = 0; i < 3; i++) statuses.push((await get(wrong, attacker)).status);
      // Over the limit: refused before the password is looked at, even the right one.
      const limited = await get(wrong, attacker);
      const right = await get(BOARD_ADMIN, attacker);
      statuses.push(limited.status, right.status);
      expect(statuses).toEqual([401, 401, 401, 429, 429]);
      expect(Number(right.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(((await right.json()) as { error: { code: string } }).error.code).toBe("RATE_LIMITED");
      // Another address is not affected; its successful logins cost nothing.
      for (let i = 0; i < 6; i++) expect((await get(BOARD_ADMIN, "192.0.2.67")).status).toBe(200);
      expect((await get(null, "192.0.2.68")).status).toBe(401);
      const text = await (await fetch(`${api.metricsUrl}/metrics`)).text();
      expect(metricValue(text, "citadel_board_denials_total", { reason: "bad_credentials" })).toBe(3);
      expect(metricValue(text, "citadel_board_denials_total", { reason: "rate_limited" })).toBe(2);
      expect(metricValue(text, "citadel_board_denials_total", { reason: "no_credentials" })).toBe(1);
      await api.close();
      closed = true;
      const recs = (await readAudit(fleet)).filter((r) => r.clientIp === attacker);
      const denied = recs.filter((r) => r.event === "auth.denied" && r.detail === "board credentials rejected");
      const limitedRecs = recs.filter((r) => r.event === "rate.limited" && r.detail === "board logins");
      expect(denied.map((r) => r.count)).toEqual([1, 2]);
      expect(limitedRecs.map((r) => r.count)).toEqual([1, 1]);
      expect(JSON.stringify(recs)).not.toContain("guess-number-one");
    } finally {
      if (!closed) await api.close();
    }
  });
});
