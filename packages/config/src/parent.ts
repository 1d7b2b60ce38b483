import { fstatSync } from "node:fs";
import net from "node:net";

/** The env variable naming the pipe a supervising parent holds open for its child. */
export const PARENT_FD_ENV = "CITADEL_PARENT_FD";

/**
 * Stops this process when the parent that started it dies, however it dies (SIGKILL,
 * an OOM kill, a closed terminal). The parent (apps/cli/src/fleet.ts) gives the child
 * one end of a pipe as fd CITADEL_PARENT_FD and never writes to it; the kernel closes
 * the parent's end when the parent is gone, and the child reads end-of-file.
 * `onParentGone` runs once; by default it sends this process SIGTERM, so the usual
 * graceful shutdown runs. A process started without the variable is left alone.
 */
export function stopWithParent(
  app: string,
  onParentGone: () => void = () => process.kill(process.pid, "SIGTERM"),
): void {
  const raw = process.env[PARENT_FD_ENV];
  // Not inherited by anything this process starts: fd numbers mean nothing there.
  delete process.env[PARENT_FD_ENV];
  if (raw === undefined) return;
  const fd = Number(raw);
  let ok = false;
  try {
    const st = Number.isInteger(fd) && fd > 2 ? fstatSync(fd) : null;
    ok = st !== null && (st.isFIFO() || st.isSocket());
  } catch {
    ok = false;
  }
  if (!ok) {
    process.stderr.write(`${app}: ${PARENT_FD_ENV}=${raw} is not an open pipe; not watching the parent\n`);
    return;
  }
  let pipe: net.Socket;
  try {
    pipe = new net.Socket({ fd, readable: true, writable: false });
  } catch (err) {
    process.stderr.write(
      `${app}: cannot watch ${PARENT_FD_ENV}=${raw} (${(err as Error).message}); not watching the parent\n`,
    );
    return;
  }
  let fired = false;
  const gone = () => {
    if (fired) return;
    fired = true;
    // Our stdout and stderr were pipes to the parent: their reader is gone too, and a
    // log line written during shutdown must not crash the drain with EPIPE.
    for (const stream of [process.stdout, process.stderr])
      stream.on("error", (err: NodeJS.ErrnoException) => {
        if (err.code !== "EPIPE") throw err;
      });
    process.stderr.write(`${app}: parent process is gone, shutting down\n`);
    onParentGone();
  };
  pipe.on("end", gone);
  pipe.on("close", gone);
  pipe.on("error", gone);
  pipe.resume();
  // Watching must not keep the process alive once it is shutting down for other reasons.
  pipe.unref();
}
