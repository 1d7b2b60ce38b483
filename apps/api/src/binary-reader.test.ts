import { Readable } from "node:stream";
import type { Tenant } from "@citadel/tenants";
import Fastify from "fastify";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { readBinaryBody } from "./binary-reader.js";
import { releaseBody } from "./submit-context.js";

const LIMIT = 4096;
const app = Fastify({ bodyLimit: LIMIT });
// As the API's auth hook does: a request naming a tenant is an authenticated one.
app.addHook("onRequest", async (req) => {
  if (req.headers["x-test-tenant"]) req.tenant = { id: String(req.headers["x-test-tenant"]) } as Tenant;
});
app.addContentTypeParser("application/octet-stream", readBinaryBody);
app.post("/", async (req) => {
  const body = req.body as Buffer;
  const h = Number(req.headers["inference-header-content-length"] ?? 0);
  const data = body.subarray(h);
  return { length: body.length, dataOffsetMod8: data.byteOffset % 8, bytes: [...body] };
});
// As a submit route does once the job is stored: the body is dropped and its buffer freed.
app.post("/stored", async (req) => {
  const body = req.body as Buffer;
  // The tensor bytes after the 5-byte header, viewed as the decoder views them.
  const view = new Float32Array(body.buffer, body.byteOffset + 5, 4);
  const before = { length: body.length, view: view.length };
  releaseBody(req);
  return { before, after: { length: body.length, view: view.length, body: req.body ?? null } };
});
app.post("/json", async (req) => {
  const body = req.body as { x: number[] };
  releaseBody(req);
  return { x: body.x, body: req.body ?? null };
});
beforeAll(() => app.ready());
afterAll(() => app.close());

const bytes = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + 3) & 255));
const post = (payload: Buffer | Readable, headers: Record<string, string>, tenant: string | null = "t1") =>
  app.inject({
    method: "POST",
    url: "/",
    headers: {
      "content-type": "application/octet-stream",
      ...(tenant ? { "x-test-tenant": tenant } : {}),
      ...headers,
    },
    payload,
  });

describe("readBinaryBody", () => {
  it("reads a body into a buffer that releaseBody frees once its job is stored", async () => {
    const res = await app.inject({
      method: "POST",
      url: "/stored",
      headers: {
        "content-type": "application/octet-stream",
        "x-test-tenant": "t1",
        "inference-header-content-length": "5",
      },
      payload: bytes(300),
    });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ before: { length: 300, view: 4 }, after: { length: 0, view: 0, body: null } });
  });

  it("releaseBody drops a JSON body without touching what it held", async () => {
    const res = await app.inject({ method: "POST", url: "/json", payload: { x: [1, 2, 3] } });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ x: [1, 2, 3], body: null });
  });

  it.each([0, 1, 5, 13, 64, 101])(
    "starts the bytes after a %i-byte header on an 8-byte boundary, body unchanged",
    async (h) => {
      const body = bytes(h + 200);
      const res = await post(body, { "inference-header-content-length": String(h) });
      expect(res.statusCode).toBe(200);
      expect(res.json()).toEqual({ length: body.length, dataOffsetMod8: 0, bytes: [...body] });
    },
  );

  it("reads a chunked body (no Content-Length) the same way", async () => {
    const body = bytes(3000);
    const res = await post(Readable.from([body.subarray(0, 1000), body.subarray(1000, 2500), body.subarray(2500)]), {
      "inference-header-content-length": "11",
    });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ length: 3000, dataOffsetMod8: 0, bytes: [...body] });
  });

  it("refuses a Content-Length past the body limit before reading (413)", async () => {
    const res = await post(bytes(LIMIT + 1), { "inference-header-content-length": "3" });
    expect(res.statusCode).toBe(413);
    expect(res.json().code).toBe("FST_ERR_CTP_BODY_TOO_LARGE");
  });

  it("stops reading a chunked body at the limit (413)", async () => {
    const res = await post(Readable.from([bytes(3000), bytes(3000)]), { "inference-header-content-length": "3" });
    expect(res.statusCode).toBe(413);
  });

  it("refuses a body shorter than its Content-Length (400)", async () => {
    const res = await post(bytes(100), { "content-length": "120", "inference-header-content-length": "3" });
    expect(res.statusCode).toBe(400);
    expect(res.json().code).toBe("FST_ERR_CTP_INVALID_CONTENT_LENGTH");
  });

  it("reserves a buffer of the declared length only for an authenticated tenant", async () => {
    const spy = vi.spyOn(Buffer, "allocUnsafeSlow");
    try {
      // Declares 4,000 bytes, sends 100: refused either way; only the tenant's request reserved 4,000 first.
      for (const tenant of ["t1", null]) {
        spy.mockClear();
        const res = await post(
          bytes(100),
          { "content-length": "4000", "inference-header-content-length": "3" },
          tenant,
        );
        expect(res.statusCode).toBe(400);
        expect(spy.mock.calls.some(([n]) => n >= 4000)).toBe(tenant !== null);
      }
      // An anonymous body that arrives whole is still read, aligned.
      const body = bytes(300);
      const res = await post(body, { "inference-header-content-length": "5" }, null);
      expect(res.json()).toEqual({ length: 300, dataOffsetMod8: 0, bytes: [...body] });
    } finally {
      spy.mockRestore();
    }
  });

  it("leaves a missing or malformed header length to the decoder (the body is read as is)", async () => {
    for (const h of [undefined, "x", "-1"]) {
      const body = bytes(50);
      const res = await post(body, h === undefined ? {} : { "inference-header-content-length": h });
      expect(res.statusCode).toBe(200);
      expect(res.json().bytes).toEqual([...body]);
    }
  });
});
