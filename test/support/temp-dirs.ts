import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll } from "vitest";

// Test directories hold dev keyrings (master keys), sealed models and logs: none outlives
// the test file that made it. Imported during a file's collection, this registers the
// file's cleanup, so tempDir works anywhere in it (top level, hooks, tests).
const made: string[] = [];
afterAll(() => {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A fresh `citadel-<label>-…` directory under the OS temp dir, removed after this file's tests. */
export function tempDir(label: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), `citadel-${label}-`));
  made.push(dir);
  return dir;
}
