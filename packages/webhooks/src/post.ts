import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { isIP } from "node:net";
import type { Target } from "./target.js";

export interface PostLimits {
  /** The whole attempt: connect, send, and the response's head and (bounded) body. */
  timeoutMs: number;
  /** Response bytes read at most; the rest is not read (the connection is dropped). */
  maxResponseBytes: number;
}

export const USER_AGENT = "Citadel-Webhooks/1";

/**
 * POSTs a JSON body to a checked target and answers the response's status. It connects
 * to the address the guard checked (never looking the host up again, so a DNS answer
 * that changes after the check cannot redirect it), sends the URL's host in Host and,
 * for https, as the TLS server name the certificate is verified against. Redirects are
 * not followed (a 3xx is an answer like any other), nothing is reused between attempts,
 * and at most `maxResponseBytes` of the answer are read. Network failures and the time
 * bound reject.
 */
export function postJson(
  target: Target,
  headers: Record<string, string>,
  body: string,
  limits: PostLimits,
): Promise<{ status: number }> {
  const { url } = target;
  const https = url.protocol === "https:";
  const payload = Buffer.from(body, "utf8");
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (err: Error | null, status?: number) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      if (err) reject(err);
      else resolve({ status: status ?? 0 });
    };
    const options = {
      method: "POST",
      host: target.address,
      family: target.family,
      port: url.port ? Number(url.port) : https ? 443 : 80,
      path: `${url.pathname}${url.search}`,
      headers: {
        ...headers,
        host: url.host,
        "content-type": "application/json",
        "content-length": String(payload.length),
        "user-agent": USER_AGENT,
      },
      agent: false,
      // The certificate must name the URL's host (SNI may not carry an IP address).
      ...(https && isIP(host) === 0 ? { servername: host } : {}),
    } as const;
    const req = (https ? httpsRequest : httpRequest)(options, (res) => {
      let read = 0;
      res.on("data", (chunk: Buffer) => {
        read += chunk.length;
        if (read >= limits.maxResponseBytes) finish(null, res.statusCode);
      });
      res.on("end", () => finish(null, res.statusCode));
      res.on("error", (err) => finish(err));
    });
    const timer = setTimeout(
      () => finish(new Error(`no complete answer within ${limits.timeoutMs} ms`)),
      limits.timeoutMs,
    );
    req.on("error", (err) => finish(err));
    req.end(payload);
  });
}
