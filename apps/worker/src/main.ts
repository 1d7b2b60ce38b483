import { loadEnvOrExit } from "@citadel/config";
import { WorkerEnv } from "./env.js";
import { startWorker } from "./worker.js";

const env = loadEnvOrExit(WorkerEnv, "citadel-worker");
const worker = await startWorker(env);

// First signal: graceful stop within SHUTDOWN_TIMEOUT_MS. Second: exit now.
let stopping = false;
for (const sig of ["SIGTERM", "SIGINT"] as const) {
  process.on(sig, () => {
    if (stopping) {
      process.stderr.write(`citadel-worker: second ${sig}, exiting now\n`);
      process.exit(130);
    }
    stopping = true;
    const force = setTimeout(() => {
      process.stderr.write("citadel-worker: shutdown deadline passed, exiting\n");
      process.exit(1);
    }, env.SHUTDOWN_TIMEOUT_MS);
    force.unref();
    void worker.close().then(() => {
      clearTimeout(force);
      process.exit(0);
    });
  });
}
