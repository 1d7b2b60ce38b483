import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { openApiDocument } from "./openapi-document.js";

/**
 * `pnpm openapi`: writes docs/openapi.json (or the path given), the document the API
 * serves with its default settings. A test fails when the committed copy differs.
 */
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const target = path.resolve(process.argv[2] ?? path.join(root, "docs", "openapi.json"));
writeFileSync(target, `${JSON.stringify(await openApiDocument(), null, 2)}\n`);
process.stdout.write(`wrote ${path.relative(process.cwd(), target)}\n`);
