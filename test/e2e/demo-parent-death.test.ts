import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { repoRoot } from "@citadel/cli/fleet";
import { Redis } from "ioredis";
import { afterAll, describe, expect, it } from "vitest";
import { deletePrefix, redisUrl } from "../support/fleet.js";
import { tempDir } from "../support/temp-dirs.js";

/**
 * Whether a process still runs. A process whose parent died is re-parented and reaped
 * by init; where nothing reaps it (a container whose PID 1 does not), it stays a
 * zombie: it has exited all the same.
 */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    // No /proc (not Linux): kill(pid, 0) succeeded, so it is there.
    return true;
  }
}

/** The last lines of an app's log (the demo's children write their own files). */
function logTail(dir: string, name: string): string {
  try {
    return readFileSync(path.join(dir, "logs", `${name}.log`), "utf8")
      .split("\n")
      .slice(-15)
      .join("\n");
  } catch (err) {
    return `(no log: ${(err as Error).message})`;
  }
}

/** Resolves once none of `procs` runs; rejects after `ms` naming the ones left, with their logs' ends. */
async function allGone(procs: Record<string, number>, dir: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const left = Object.entries(procs).filter(([, pid]) => running(pid));
    if (left.length === 0) return;
    if (Date.now() > deadline)
      throw new Error(
        `still running ${ms} ms after the CLI died:\n${left.map(([name, pid]) => `${name} (${pid}):\n${logTail(dir, name)}`).join("\n")}`,
      );
    await new Promise((r) => setTimeout(r, 100));
  }
}

const prefix = `{demo-kill-${randomBytes(4).toString("hex")}}`;
const redis = new Redis(redisUrl());
afterAll(async () => {
  await deletePrefix(redis, prefix);
  await redis.quit();
});

describe("citadel demo --serve", () => {
  it("takes its API and workers down with it when the CLI is killed with SIGKILL", async () => {
    const dir = tempDir("demo-kill");
    const cli = spawn(
      process.execPath,
      [path.join(repoRoot, "apps/cli/bin/citadel.mjs"), "demo", "--serve", "--jobs", "0", "--dir", dir],
      {
        cwd: dir,
        env: { PATH: process.env.PATH ?? "", HOME: dir, REDIS_URL: redisUrl(), CITADEL_PREFIX: prefix },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let out = "";
    cli.stderr.on("data", (d: Buffer) => {
      out += d.toString();
    });
    const exited = new Promise<void>((resolve) => cli.once("exit", () => resolve()));
    // "serving:" is printed once demo.json (with the children's pids) is written.
    await new Promise<void>((resolve, reject) => {
      cli.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        if (out.includes("serving:")) resolve();
      });
      cli.once("exit", (code) => reject(new Error(`demo exited ${code} before serving:\n${out}`)));
    });
    const state = JSON.parse(readFileSync(path.join(dir, "demo.json"), "utf8")) as {
      apiUrl: string;
      pids: Record<string, number>;
    };
    const pids = Object.values(state.pids);
    try {
      expect(Object.keys(state.pids).sort()).toEqual(["api", "worker-1", "worker-2"]);
      expect(pids.every(running), out).toBe(true);
      expect((await fetch(`${state.apiUrl}/healthz`)).status).toBe(200);

      cli.kill("SIGKILL");
      await exited;
      await allGone(state.pids, dir, 60_000);
      await expect(fetch(`${state.apiUrl}/healthz`)).rejects.toThrow();
    } finally {
      for (const pid of pids.filter(running)) process.kill(pid, "SIGKILL");
      if (cli.exitCode === null && cli.signalCode === null) cli.kill("SIGKILL");
    }
  });
});
