#!/usr/bin/env node
// Copies the files that code reads at run time relative to its own module (the Lua
// scripts that packages/queue loads through `new URL(…, import.meta.url)`) from each
// workspace package's src/ into its dist/, after `tsc -b` has emitted the JavaScript.
// TypeScript and the source-only .mjs shims (they register tsx) are not assets.
import { copyFileSync, existsSync, mkdirSync, readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const NOT_ASSET = /\.(ts|mts|cts|mjs)$/;

/** Every file under `dir`, as paths relative to it. */
function filesUnder(dir, rel = "") {
  return readdirSync(path.join(dir, rel), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? filesUnder(dir, path.join(rel, e.name)) : [path.join(rel, e.name)],
  );
}

let copied = 0;
for (const group of ["apps", "packages"]) {
  for (const pkg of readdirSync(path.join(root, group))) {
    const src = path.join(root, group, pkg, "src");
    const dist = path.join(root, group, pkg, "dist");
    if (!existsSync(src)) continue;
    if (!existsSync(dist)) throw new Error(`${group}/${pkg}/dist is missing: run tsc -b tsconfig.build.json first`);
    for (const file of filesUnder(src).filter((f) => !NOT_ASSET.test(f))) {
      mkdirSync(path.dirname(path.join(dist, file)), { recursive: true });
      copyFileSync(path.join(src, file), path.join(dist, file));
      copied++;
    }
  }
}
process.stderr.write(`copy-assets: ${copied} file(s) copied into dist/\n`);
