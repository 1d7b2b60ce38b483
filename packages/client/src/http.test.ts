import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { CitadelClient } from "./client.js";
import { CitadelApiError, CitadelConnectionError } from "./errors.js";
import { retryAfter } from "./http.js";
import { tensor } from "./tensor.js";

// The client's HTTP behaviour against a real HTTP server playing the API's answers.

type Handler = (req: IncomingMessage, body: Buffer, res: ServerResponse) => void;
let server: Server | undefined;

async function serve(
  handler: Handler,
): Promise<{ url: string; seen: { headers: IncomingMessage["headers"]; url: string }[] }> {
  const seen: { headers: IncomingMessage["headers"]; url: string }[] = [];
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      seen.push({ headers: req.headers, url: req.url ?? "" });
      handler(req, Buffer.concat(chunks), res);
    });
  });
  await new Promise<void>((r) => server?.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}
afterEach(async () => {
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  server = undefined;
});

const refuse = (res: ServerResponse, status: number, code: string, retry?: string) => {
  res.writeHead(status, { "content-type": "application/json", ...(retry ? { "retry-after": retry } : {}) });
  res.end(JSON.stringify({ error: { code, message: `${code} here`, details: { n: 1 } } }));
};
const accept = (res: ServerResponse) => {
  res.writeHead(202, { "content-type": "application/json" });
  res.end(JSON.stringify({ id: "m.1", status: "queued", model: "m", version: "1" }));
};
const job = { model: "m", inputs: { x: tensor(new Float32Array([1]), [1]) } };

describe("refusals and retries", () => {
  it("throws a 429 as CitadelApiError with its code, message, details and Retry-After", async () => {
    const api = await serve((_req, _body, res) => refuse(res, 429, "RATE_LIMITED", "2"));
    const client = new CitadelClient({ baseUrl: api.url, apiKey: "k", retry: false });
    const err = await client.submit(job).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CitadelApiError);
    expect(err).toMatchObject({
      status: 429,
      code: "RATE_LIMITED",
      message: "RATE_LIMITED here",
      details: { n: 1 },
      retryAfterMs: 2000,
    });
    expect(api.seen).toHaveLength(1);
    expect(api.seen[0]?.headers.authorization).toBe("Bearer k");
  });

  it("retries after Retry-After with the same Idempotency-Key, and stops at its attempts", async () => {
    let n = 0;
    const api = await serve((_req, _body, res) => (++n < 3 ? refuse(res, 503, "QUEUE_UNAVAILABLE", "1") : accept(res)));
    const client = new CitadelClient({ baseUrl: api.url, apiKey: "k", retry: { attempts: 3 } });
    const started = Date.now();
    expect(await client.submit(job, { idempotencyKey: "key-1" })).toMatchObject({ id: "m.1" });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
    expect(api.seen.map((s) => s.headers["idempotency-key"])).toEqual(["key-1", "key-1", "key-1"]);
    n = -10;
    const twice = new CitadelClient({ baseUrl: api.url, apiKey: "k", retry: { attempts: 2 } });
    await expect(twice.submit(job, { idempotencyKey: "key-2" })).rejects.toMatchObject({ code: "QUEUE_UNAVAILABLE" });
  });

  it("retries a submit without a key only after refusals that queued nothing", async () => {
    const codes = ["QUEUE_FULL", "QUEUE_UNAVAILABLE"];
    const api = await serve((_req, _body, res) => {
      const code = codes.shift();
      if (code) refuse(res, 503, code, "1");
      else accept(res);
    });
    const client = new CitadelClient({ baseUrl: api.url, apiKey: "k" });
    // QUEUE_FULL is retried; QUEUE_UNAVAILABLE may hide an accepted job, and there is no key to find it by.
    await expect(client.submit(job)).rejects.toMatchObject({ status: 503, code: "QUEUE_UNAVAILABLE" });
    expect(api.seen).toHaveLength(2);
    expect(api.seen[0]?.headers["idempotency-key"]).toBeUndefined();
  });

  it("does not wait out a Retry-After longer than maxDelayMs", async () => {
    const api = await serve((_req, _body, res) => refuse(res, 429, "QUOTA_EXCEEDED", "120"));
    const client = new CitadelClient({ baseUrl: api.url, apiKey: "k", retry: { attempts: 5, maxDelayMs: 5000 } });
    await expect(client.getJob("m.1")).rejects.toMatchObject({ code: "QUOTA_EXCEEDED", retryAfterMs: 120_000 });
    expect(api.seen).toHaveLength(1);
  });

  it("names a refusal without Citadel's envelope by its status, and a non-JSON success BAD_RESPONSE", async () => {
    const api = await serve((req, _body, res) => {
      res.writeHead(req.method === "DELETE" ? 502 : 200, { "content-type": "text/plain" });
      res.end("bad gateway");
    });
    const client = new CitadelClient({ baseUrl: `${api.url}/`, apiKey: "k" });
    await expect(client.cancel("m.1")).rejects.toMatchObject({ status: 502, code: "HTTP_502", message: "bad gateway" });
    await expect(client.getBatch("batch_x")).rejects.toMatchObject({ code: "BAD_RESPONSE" });
    expect(api.seen[1]?.url).toBe("/v1/batches/batch_x");
  });
});

describe("no answer", () => {
  it("names the address that refused the connection", async () => {
    const api = await serve(() => undefined);
    await new Promise<void>((r) => server?.close(() => r()));
    server = undefined;
    const err = await new CitadelClient({ baseUrl: api.url, apiKey: "k" }).getJob("x").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CitadelConnectionError);
    expect((err as Error).message).toBe(`cannot reach the API at ${api.url}: connection refused`);
  });

  it("times out after timeoutMs plus the wait it asked for", async () => {
    const api = await serve(() => undefined); // never answers
    const client = new CitadelClient({ baseUrl: api.url, apiKey: "k", timeoutMs: 100 });
    const started = Date.now();
    const err = await client.getJob("x", { waitMs: 200 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ name: "CitadelConnectionError", timedOut: true, reason: "no answer within 300 ms" });
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(api.seen[0]?.url).toBe("/v1/jobs/x?wait=200");
    server?.closeAllConnections();
  });

  it("passes the caller's abort on as it is", async () => {
    const { url } = await serve(() => undefined);
    const controller = new AbortController();
    const pending = new CitadelClient({ baseUrl: url, apiKey: "k" }).getJob("x", { signal: controller.signal });
    controller.abort(new Error("stopped by the caller"));
    await expect(pending).rejects.toThrow("stopped by the caller");
    server?.closeAllConnections();
  });
});

describe("retryAfter", () => {
  it("reads delay-seconds and HTTP dates", () => {
    expect(retryAfter("3")).toBe(3000);
    expect(retryAfter("Wed, 21 Oct 2015 07:28:10 GMT", Date.UTC(2015, 9, 21, 7, 28, 0))).toBe(10_000);
    expect(retryAfter("Wed, 21 Oct 2015 07:28:00 GMT", Date.UTC(2015, 9, 21, 7, 29, 0))).toBe(0);
    expect(retryAfter("soon")).toBeUndefined();
    expect(retryAfter(null)).toBeUndefined();
  });
});
