import net from "node:net";

/** One command as Redis MONITOR reports it. */
export interface MonitoredCommand {
  /** The command and its arguments, unquoted (MONITOR's own escapes, such as \n, are left as they are). */
  args: string[];
  /** Who ran it: "<db> <addr>", or "<db> lua" for a call made inside a script. */
  source: string;
}

/**
 * MONITOR on a socket of its own, read line by line. Not ioredis's `monitor()`: when
 * MONITOR's +OK and another client's first command reach ioredis in one read, it takes
 * that command for a reply to nothing and fails ("Command queue state error"), which
 * happens on a Redis other tests are using.
 */
export async function monitorRedis(url: string, onCommand: (c: MonitoredCommand) => void): Promise<{ close(): void }> {
  const u = new URL(url);
  const socket = net.connect(Number(u.port || 6379), u.hostname);
  const auth = u.password ? [decodeURIComponent(u.username || "default"), decodeURIComponent(u.password)] : null;
  await new Promise<void>((resolve, reject) => {
    let buffered = "";
    let oks = auth ? 2 : 1;
    socket.once("error", reject);
    socket.on("data", (chunk: Buffer) => {
      buffered += chunk.toString("utf8");
      let end = buffered.indexOf("\r\n");
      while (end >= 0) {
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        end = buffered.indexOf("\r\n");
        if (oks > 0) {
          if (line !== "+OK") return reject(new Error(`MONITOR refused: ${line}`));
          if (--oks === 0) resolve();
          continue;
        }
        const m = /^\+[\d.]+ \[([^\]]*)\] (.*)$/.exec(line);
        if (!m) continue;
        const args = [...(m[2] ?? "").matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((q) =>
          (q[1] ?? "").replace(/\\(["\\])/g, "$1"),
        );
        onCommand({ args, source: m[1] ?? "" });
      }
    });
    socket.once("connect", () => {
      if (auth) socket.write(resp(["AUTH", ...auth]));
      socket.write("MONITOR\r\n");
    });
  });
  return { close: () => socket.destroy() };
}

/** A command in RESP (binary-safe, unlike the inline form). */
const resp = (args: string[]): string =>
  `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join("")}`;
