import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { postJson } from "./post.js";
import type { Target } from "./target.js";

const servers: Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

/** A local HTTP server (127.0.0.1) answering with `handle`; every request it got is kept. */
async function serve(
  handle: (req: IncomingMessage, res: ServerResponse, body: string) => void,
): Promise<{ port: number; seen: { headers: IncomingMessage["headers"]; body: string; url: string }[] }> {
  const seen: { headers: IncomingMessage["headers"]; body: string; url: string }[] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => {
      body += c.toString();
    });
    req.on("end", () => {
      seen.push({ headers: req.headers, body, url: req.url ?? "" });
      handle(req, res, body);
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { port: (server.address() as AddressInfo).port, seen };
}

/** A target as the guard would return it: the URL names a host that does not exist; the address is the server's. */
const target = (port: number, path = "/hook?t=1"): Target => ({
  url: new URL(`http://callback.invalid:${port}${path}`),
  address: "127.0.0.1",
  family: 4,
  allowlisted: true,
});

const limits = { timeoutMs: 5000, maxResponseBytes: 1024 };

describe("postJson", () => {
  it("connects to the checked address (no lookup of the URL's host) and sends its host, path and the body", async () => {
    const s = await serve((_req, res) => res.writeHead(204).end());
    const r = await postJson(target(s.port), { "webhook-id": "msg_1" }, '{"a":1}', limits);
    expect(r.status).toBe(204);
    expect(s.seen).toHaveLength(1);
    expect(s.seen[0]).toMatchObject({ url: "/hook?t=1", body: '{"a":1}' });
    expect(s.seen[0]?.headers).toMatchObject({
      host: `callback.invalid:${s.port}`,
      "content-type": "application/json",
      "webhook-id": "msg_1",
    });
  });

  it("does not follow a redirect: the 3xx is the answer", async () => {
    const elsewhere = await serve((_req, res) => res.writeHead(200).end());
    const s = await serve((_req, res) => res.writeHead(307, { location: `http://127.0.0.1:${elsewhere.port}/` }).end());
    expect((await postJson(target(s.port), {}, "{}", limits)).status).toBe(307);
    expect(elsewhere.seen).toHaveLength(0);
  });

  it("answers after reading at most maxResponseBytes of an endless answer", async () => {
    const s = await serve((_req, res) => {
      res.writeHead(200);
      const chunk = Buffer.alloc(16 * 1024, 120);
      const pump = setInterval(() => {
        if (res.destroyed) clearInterval(pump);
        else res.write(chunk);
      }, 1);
    });
    expect((await postJson(target(s.port), {}, "{}", limits)).status).toBe(200);
  });

  it("gives up at its time bound when the receiver never answers", async () => {
    const s = await serve(() => undefined);
    const t = performance.now();
    await expect(postJson(target(s.port), {}, "{}", { ...limits, timeoutMs: 300 })).rejects.toThrow(
      /no complete answer within 300 ms/,
    );
    expect(performance.now() - t).toBeLessThan(4000);
  });

  it("rejects when nothing listens", async () => {
    const s = await serve((_req, res) => res.end());
    const port = s.port;
    await Promise.all(servers.splice(0).map((x) => new Promise((r) => x.close(r))));
    await expect(postJson(target(port), {}, "{}", limits)).rejects.toThrow(/ECONNREFUSED/);
  });
});
