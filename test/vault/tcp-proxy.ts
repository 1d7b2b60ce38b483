import { connect, createServer, type Server, type Socket } from "node:net";

export type ProxyMode = "pass" | "hang" | "refuse" | "sealed";

export interface TcpProxy {
  readonly addr: string;
  /**
   * `hang`: accept connections and never forward a byte; `refuse`: drop them at once;
   * `sealed`: answer every request as a sealed Vault does (503 `{"errors":["Vault is sealed"]}`).
   */
  setMode(mode: ProxyMode): void;
  stop(): Promise<void>;
}

/**
 * A TCP proxy in front of any Vault (real, container or test server) so every backend can
 * be made to hang or drop connections: the same outage on all of them.
 */
export async function startTcpProxy(targetAddr: string): Promise<TcpProxy> {
  const target = new URL(targetAddr);
  const targetPort = Number(target.port || (target.protocol === "https:" ? 443 : 80));
  let mode: ProxyMode = "pass";
  const sockets = new Set<Socket>();
  const track = (s: Socket): void => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => s.destroy());
  };
  const answerSealed = (client: Socket): void => {
    const body = JSON.stringify({ errors: ["Vault is sealed"] });
    client.end(
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n" +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  };
  const server: Server = createServer((client) => {
    track(client);
    if (mode === "refuse") {
      client.destroy();
      return;
    }
    if (mode === "hang") return; // held open, never answered
    if (mode === "sealed") {
      client.once("data", () => answerSealed(client));
      return;
    }
    const upstream = connect(targetPort, target.hostname);
    track(upstream);
    // Chunk by chunk so a kept-alive connection sees a later switch to `sealed` at its next request.
    client.on("data", (chunk: Buffer) => {
      if (mode === "sealed") {
        upstream.destroy();
        answerSealed(client);
        return;
      }
      upstream.write(chunk);
    });
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return {
    addr: `${target.protocol}//127.0.0.1:${port}`,
    setMode(next) {
      mode = next;
      // Kept-alive connections would bypass a hang or refusal: drop them.
      if (next === "hang" || next === "refuse") for (const s of sockets) s.destroy();
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}
