import { Readable } from "node:stream";
import { deflateSync, gzipSync } from "node:zlib";
import { CitadelError, httpStatusFor } from "@citadel/contracts";
import Fastify from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readBinaryBody } from "./binary-reader.js";
import { contentCoding, decodable, decodeBody } from "./content-encoding.js";

const LIMIT = 4096;
const app = Fastify({ bodyLimit: LIMIT });
app.addHook("preParsing", async (req, _reply, payload) => {
  const coding = contentCoding(req.headers["content-encoding"]);
  if (coding === undefined || !decodable(coding)) return payload;
  return decodeBody(payload, coding, LIMIT);
});
app.addContentTypeParser("application/octet-stream", readBinaryBody);
app.addContentTypeParser("text/plain", { parseAs: "buffer" }, (_req, body, done) => done(null, body));
app.post("/", async (req) => ({ bytes: [...(req.body as Buffer)] }));
app.setErrorHandler((err, _req, reply) => {
  if (err instanceof CitadelError)
    return reply.code(httpStatusFor(err.code)).send({ code: err.code, message: err.message });
  const e = err as Error & { code?: string; statusCode?: number };
  return reply.code(e.statusCode ?? 400).send({ code: e.code, message: e.message });
});
beforeAll(() => app.ready());
afterAll(() => app.close());

const bytes = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + 3) & 255));
const post = (payload: Buffer | Readable, headers: Record<string, string>) =>
  app.inject({ method: "POST", url: "/", headers: { "content-type": "text/plain", ...headers }, payload });

describe("contentCoding", () => {
  it("names the coding, none for identity or no header", () => {
    expect(contentCoding(undefined)).toBeUndefined();
    expect(contentCoding(" Identity ")).toBeUndefined();
    expect(contentCoding(" GZIP")).toBe("gzip");
    expect(decodable("gzip") && decodable("x-gzip") && decodable("deflate")).toBe(true);
    expect(decodable("br") || decodable("compress") || decodable("constructor")).toBe(false);
  });
});

describe("decodeBody", () => {
  it.each([
    ["gzip", gzipSync],
    ["x-gzip", gzipSync],
    ["deflate", deflateSync],
  ] as const)("inflates a %s body for every body reader", async (coding, encode) => {
    const body = bytes(3000);
    for (const type of ["text/plain", "application/octet-stream"]) {
      const res = await post(encode(body), { "content-encoding": coding, "content-type": type });
      expect(res.statusCode, res.body).toBe(200);
      expect(res.json().bytes).toEqual([...body]);
    }
  });

  it("inflates a chunked body (no Content-Length)", async () => {
    const wire = gzipSync(bytes(3000));
    const res = await post(Readable.from([wire.subarray(0, 10), wire.subarray(10, 40), wire.subarray(40)]), {
      "content-encoding": "gzip",
      "content-type": "application/octet-stream",
    });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().bytes).toEqual([...bytes(3000)]);
  });

  it("refuses a body that inflates past the limit (413), though the bytes sent are under it", async () => {
    // Two members of 1 MiB of zeros each, ~2 KB gzipped: the limit holds for the decoded bytes.
    const wire = Buffer.concat([gzipSync(Buffer.alloc(1 << 20)), gzipSync(Buffer.alloc(1 << 20))]);
    expect(wire.length).toBeLessThan(LIMIT);
    for (const type of ["text/plain", "application/octet-stream"]) {
      const res = await post(wire, { "content-encoding": "gzip", "content-type": type });
      expect(res.statusCode).toBe(413);
      expect(res.json()).toMatchObject({
        code: "PAYLOAD_TOO_LARGE",
        message: `the request body inflates past ${LIMIT} bytes`,
      });
    }
  });

  it("refuses bytes that do not decode (400 BODY_ENCODING_INVALID), and a wrong Content-Length of the bytes sent", async () => {
    for (const type of ["text/plain", "application/octet-stream"]) {
      const bad = await post(Buffer.from("not gzip at all"), { "content-encoding": "gzip", "content-type": type });
      expect(bad.statusCode).toBe(400);
      expect(bad.json()).toMatchObject({ code: "BODY_ENCODING_INVALID", message: expect.stringMatching(/gzip/) });
      const cut = gzipSync(bytes(3000));
      const truncated = await post(cut.subarray(0, cut.length - 6), {
        "content-encoding": "gzip",
        "content-type": type,
      });
      expect(truncated.statusCode).toBe(400);
      expect(truncated.json().code).toBe("BODY_ENCODING_INVALID");
      // Content-Length counts the bytes sent, compressed.
      const wire = gzipSync(bytes(100));
      const wrong = await post(wire, {
        "content-encoding": "gzip",
        "content-type": type,
        "content-length": String(wire.length - 1),
      });
      expect(wrong.statusCode).toBe(400);
      expect(wrong.json().code).toBe("FST_ERR_CTP_INVALID_CONTENT_LENGTH");
    }
  });
});
