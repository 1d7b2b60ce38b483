#!/usr/bin/env node
// The `citadel` CLI. It runs the built JavaScript (dist/main.js, from `pnpm build`);
// started with `node --conditions=@citadel/source`, the package resolves to its
// TypeScript source instead and tsx is registered to run it (tests, development).
import { existsSync } from "node:fs";

let entry;
try {
  entry = import.meta.resolve("@citadel/cli");
} catch {
  // Node's resolver throws when the export's target file does not exist.
}
if (!entry || (entry.startsWith("file:") && !existsSync(new URL(entry)))) {
  process.stderr.write(
    "citadel: the CLI is not built (apps/cli/dist/main.js is missing): run `pnpm build` first, " +
      "or run it from source: node --conditions=@citadel/source apps/cli/bin/citadel.mjs …\n",
  );
  process.exit(1);
}
if (entry.endsWith(".ts")) {
  const { register } = await import("tsx/esm/api");
  register();
}
await import(entry);
