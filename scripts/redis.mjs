// Finds or starts the Redis that the demo and the tests use. Plain Node (no deps):
// the bootstrap runs it before `pnpm install`. Order: REDIS_URL, else 127.0.0.1:6379
// if it answers PING, else a private `redis-server` on a free port.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

/** Sends PING over RESP and resolves true on +PONG (or -NOAUTH: something is there). */
export function ping(url, timeoutMs = 500) {
  const u = new URL(url);
  return new Promise((resolve) => {
    const sock = net.connect({ host: u.hostname || "127.0.0.1", port: Number(u.port || 6379) });
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(timeoutMs, () => done(false));
    sock.on("error", () => done(false));
    sock.on("connect", () => sock.write("*1\r\n$4\r\nPING\r\n"));
    sock.on("data", (d) => done(d.toString().startsWith("+PONG")));
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function haveRedisServer() {
  return spawnSync("redis-server", ["--version"], { stdio: "ignore" }).status === 0;
}

/** REDIS_URL (must answer) or a server already on 127.0.0.1:6379; null when neither. */
export async function findRedis() {
  if (process.env.REDIS_URL) {
    if (!(await ping(process.env.REDIS_URL, 2000)))
      throw new Error(`REDIS_URL=${redact(process.env.REDIS_URL)} does not answer PING`);
    return { url: process.env.REDIS_URL, source: "env", stop: async () => {} };
  }
  const local = "redis://127.0.0.1:6379";
  if (await ping(local)) return { url: local, source: "local", stop: async () => {} };
  return null;
}

/**
 * Spawns a private `redis-server` on a free port (installing it with apt-get when
 * `install` is set and we are root).
 * @param {{ log?: (msg: string) => void, install?: boolean }} [opts]
 */
export async function startRedisServer(opts = {}) {
  const log = opts.log ?? ((m) => process.stderr.write(`${m}\n`));
  if (!haveRedisServer() && opts.install && process.getuid?.() === 0) {
    log("redis: no server on 127.0.0.1:6379 and no redis-server binary; installing it with apt-get");
    spawnSync("apt-get", ["update", "-qq"], { stdio: "inherit" });
    spawnSync("apt-get", ["install", "-y", "-qq", "redis-server"], {
      stdio: "inherit",
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    });
  }
  if (!haveRedisServer()) {
    throw new Error(
      "No Redis found: set REDIS_URL, run one on 127.0.0.1:6379, or install redis-server (Debian: apt-get install redis-server; macOS: brew install redis).",
    );
  }
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), "citadel-redis-"));
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
    {
      stdio: "ignore",
    },
  );
  const url = `redis://127.0.0.1:${port}`;
  for (let i = 0; i < 100 && !(await ping(url)); i++) await new Promise((r) => setTimeout(r, 50));
  if (!(await ping(url))) throw new Error(`spawned redis-server on port ${port} did not answer`);
  log(`redis: started a private redis-server on ${url}`);
  return {
    url,
    source: "spawned",
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}

/** @param {{ log?: (msg: string) => void, install?: boolean }} [opts] */
export async function findOrStartRedis(opts = {}) {
  return (await findRedis()) ?? (await startRedisServer(opts));
}

function redact(url) {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "<unparseable url>";
  }
}
