import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { redisUrl } from "../support/fleet.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** Runs test/gpu/smoke.ts as a person would; resolves with its exit code and stdout. */
function smoke(args: string[]): Promise<{ code: number | null; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      ["--conditions=@citadel/source", "--import", "tsx", "test/gpu/smoke.ts", ...args],
      { cwd: ROOT, env: { ...process.env, REDIS_URL: redisUrl() }, stdio: ["ignore", "pipe", "ignore"] },
    );
    let stdout = "";
    child.stdout.on("data", (b: Buffer) => {
      stdout += b.toString();
    });
    child.on("exit", (code) => resolve({ code, stdout }));
  });
}

describe("test/gpu/smoke.ts (the GPU node check) keeps working", () => {
  it("--cpu: serves through a real API and worker, prints provider, equality with CPU and throughput", async () => {
    const { code, stdout } = await smoke(["--cpu"]);
    expect(stdout, stdout).toMatch(/^host {2}onnxruntime \S+, providers this node can load: .*cpu/m);
    expect(stdout, stdout).toMatch(
      /^ok {4}CPU \(the script's own test\): provider cpu, batch 4, max \|served − cpu\| \S+, \d+ samples\/s through the fleet \(onnxruntime CPU alone: \d+\)$/m,
    );
    expect(code, stdout).toBe(0);
  });
});
