import { createServer, type Server } from "node:http";
import { coerceError } from "@citadel/contracts";
import type { Logger, Registry } from "@citadel/telemetry";

export interface MetricsServer {
  /** http://127.0.0.1:<port>, the address a local scraper uses. */
  url: string;
  close(): Promise<void>;
}

/**
 * /metrics on a listener of its own, apart from the public API: queue depths, tenant
 * names and rejection counts are for Prometheus, not for whoever can reach the API.
 * `collect` refreshes gauges that are read on demand before each scrape.
 */
export async function startMetricsServer(o: {
  host: string;
  port: number;
  registry: Registry;
  collect: () => Promise<void>;
  log: Logger;
}): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    if (req.method !== "GET" || req.url !== "/metrics") {
      res.writeHead(404).end();
      return;
    }
    void (async () => {
      await o.collect();
      const body = await o.registry.metrics();
      res.writeHead(200, { "content-type": o.registry.contentType }).end(body);
    })().catch((err: unknown) => {
      o.log.error({ err: coerceError(err) }, "metrics endpoint failed");
      res.writeHead(500).end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : o.port;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
