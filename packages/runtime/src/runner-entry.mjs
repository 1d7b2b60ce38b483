// Worker-thread entry. Node 20 does not apply the parent's --import loaders to a
// worker thread's entry module, so the thread registers tsx itself (no build step).
import { register } from "tsx/esm/api";

register();
await import("./runner-thread.ts");
