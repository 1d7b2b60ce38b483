// Worker-thread entry when the runtime runs from source (vitest, tsx dev runs); the
// built runtime starts dist/runner-thread.js directly. Node 20 does not apply the
// parent's --import loaders to a worker thread's entry module, so the thread registers
// tsx itself; the parent passes --conditions=@citadel/source so workspace packages
// resolve to their sources here too.
import { register } from "tsx/esm/api";

register();
await import("./runner-thread.ts");
