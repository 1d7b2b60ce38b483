import { checkAuditKeyOrExit, loadEnvOrExit, stopWithParent } from "@citadel/config";
import { WorkerEnv } from "./env.js";
import { disableCoreDumpsOrExit } from "./harden.js";
import { startWorker } from "./worker.js";

// Modules are loaded by now (imports run first): the cold-start split's "main" stage.
const mainMs = performance.now();
// Started by the CLI (the demo): stop when it dies, even by SIGKILL.
stopWithParent("citadel-worker");
const env = loadEnvOrExit(WorkerEnv, "citadel-worker");
checkAuditKeyOrExit(env, "citadel-worker");
disableCoreDumpsOrExit(env);
const worker = await startWorker(env, { mainMs });

// First signal: graceful stop within SHUTDOWN_TIMEOUT_MS. Second: exit now.
let stopping = false;
for (const sig of ["SIGTERM", "SIGINT"] as const) {
  process.on(sig, () => {
    if (stopping) {
      process.stderr.write(`citadel-worker: second ${sig}, exiting now\n`);
      // SIGKILL ourselves rather than process.exit(): a runner thread may be inside a
      // native onnxruntime call, and tearing the environment down under it aborts.
      process.kill(process.pid, "SIGKILL");
    }
    stopping = true;
    const force = setTimeout(() => {
      process.stderr.write("citadel-worker: shutdown deadline passed, exiting\n");
      process.kill(process.pid, "SIGKILL");
    }, env.SHUTDOWN_TIMEOUT_MS);
    force.unref();
    void worker.close().then(() => {
      clearTimeout(force);
      process.exit(0);
    });
  });
}
