#!/usr/bin/env node
// The `citadel` CLI runs from TypeScript source through tsx (no build step).
import { register } from "tsx/esm/api";

register();
await import("../src/main.ts");
