import { spawn } from "node:child_process";
import type { Socket } from "node:net";
import { describe, expect, it } from "vitest";

const PARENT_TS = new URL("./parent.ts", import.meta.url).href;

/** A child that watches its parent pipe and says how it ended; it would otherwise run forever. */
function child(env: Record<string, string>) {
  const script = `
    import { stopWithParent } from ${JSON.stringify(PARENT_TS)};
    stopWithParent("t", () => { process.stdout.write("parent gone\\n"); process.exit(3); });
    process.stdout.write("watching " + (process.env.CITADEL_PARENT_FD ?? "unset") + "\\n");
    setInterval(() => {}, 60_000);
  `;
  const p = spawn(process.execPath, ["--import", import.meta.resolve("tsx"), "--input-type=module", "-e", script], {
    env: { PATH: process.env.PATH ?? "", ...env },
    stdio: ["ignore", "pipe", "pipe", "pipe"],
  });
  let out = "";
  p.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  p.stderr?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  // The exit code, once the child has exited and everything it wrote has been read.
  const ended = (s: NodeJS.ReadableStream | null) => new Promise<void>((resolve) => s?.once("end", () => resolve()));
  const exited = Promise.all([
    new Promise<number | null>((resolve) => p.once("exit", (code) => resolve(code))),
    ended(p.stdout),
    ended(p.stderr),
  ]).then(([code]) => code);
  const said = (text: string) =>
    new Promise<void>((resolve, reject) => {
      const check = () => out.includes(text) && resolve();
      p.stdout?.on("data", check);
      p.once("exit", () => (out.includes(text) ? resolve() : reject(new Error(`exited without "${text}":\n${out}`))));
      check();
    });
  return { p, exited, said, output: () => out };
}

describe("stopWithParent", () => {
  it("runs the handler once the parent's end of the pipe closes, as when the parent dies", async () => {
    const c = child({ CITADEL_PARENT_FD: "3" });
    // The variable is consumed: nothing the child starts inherits it.
    await c.said("watching unset");
    (c.p.stdio[3] as Socket).destroy();
    expect(await c.exited).toBe(3);
    expect(c.output()).toMatch(/t: parent process is gone, shutting down/);
    expect(c.output()).toMatch(/parent gone/);
  });

  it("leaves a process started without the variable alone", async () => {
    const c = child({});
    await c.said("watching unset");
    (c.p.stdio[3] as Socket).destroy();
    // Still running: stop it ourselves; a SIGTERM, not the handler, ends it.
    c.p.kill("SIGTERM");
    expect(await c.exited).toBeNull();
    expect(c.output()).not.toMatch(/parent gone/);
  });

  it("refuses to watch an fd that is not a pipe, and says so", async () => {
    const c = child({ CITADEL_PARENT_FD: "1000" });
    await c.said("watching unset");
    c.p.kill("SIGTERM");
    await c.exited;
    expect(c.output()).toMatch(/CITADEL_PARENT_FD=1000 is not an open pipe; not watching the parent/);
  });
});
