import { ConfigError, checkAuditKeyOrExit, loadEnvOrExit, stopWithParent } from "@citadel/config";
import closeWithGrace from "close-with-grace";
import { ApiEnv } from "./env.js";
import { startApi } from "./server.js";
import { webhookKeyProblem } from "./webhooks.js";

// Started by the CLI (the demo): stop when it dies, even by SIGKILL.
stopWithParent("citadel-api");
const env = loadEnvOrExit(ApiEnv, "citadel-api");
checkAuditKeyOrExit(env, "citadel-api");
const webhookKey = webhookKeyProblem(env);
if (webhookKey !== null) {
  process.stderr.write(`citadel-api: ${new ConfigError([webhookKey]).message}\n`);
  process.exit(78);
}
const api = await startApi(env);

// Graceful: stop accepting, finish in-flight requests, close Redis, exit 0.
closeWithGrace({ delay: env.REQUEST_TIMEOUT_MS }, async ({ err, signal }) => {
  if (err) process.stderr.write(`citadel-api: shutting down after error: ${err.message}\n`);
  else process.stderr.write(`citadel-api: ${signal ?? "shutdown"}: draining\n`);
  await api.close();
});
