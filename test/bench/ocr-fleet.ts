import { cpSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { AppForm } from "@citadel/cli/fleet";
import { OCR_CLS_PATH } from "@citadel/cli/sample-models";
import { buildHeavyConvNet } from "@citadel/onnx";
import {
  apiEnv,
  type FleetSetup,
  freePort,
  type Proc,
  say,
  setupFleet,
  startOwnRedis,
  startProc,
  workerEnv,
} from "./harness.js";

/** The profiling scripts' fleet: one API and one worker serving PaddleOCR cls, on a Redis of their own. */
export interface OcrFleet {
  fleet: FleetSetup;
  api: Proc;
  worker: Proc;
  /** Stops the worker, the API, the fleet's clients and the Redis, in that order. */
  close(): Promise<void>;
}

/**
 * Publishes PaddleOCR cls as the bench does (maxBatch 16, maxQueueDelayMs 2) and starts
 * one API and one worker (`workerName` names its logs) with `opts`' Node flags and form.
 * `model: "heavy"`: the heavy conv net instead; `"light"`: the same net with one filter
 * in one layer, same input and output, almost no compute (what a GPU node's CPU sees).
 */
export async function startOcrFleet(
  workerName: string,
  opts: { nodeArgs?: string[]; form?: AppForm; model?: "ocr" | "heavy" | "light" },
): Promise<OcrFleet> {
  const own = await startOwnRedis();
  const fleet = await setupFleet({ redisUrl: own.url, prefix: "{bench}" });
  // Either conv net (x[N,3,64,64], range ±10) is published under the same name.
  const heavy = opts.model === "heavy" || opts.model === "light";
  const model = heavy
    ? buildHeavyConvNet(opts.model === "light" ? { filters: 1, layers: 1 } : {})
    : new Uint8Array(readFileSync(OCR_CLS_PATH));
  await fleet.publish(model, {
    name: "ocr-cls",
    version: "1",
    spec: {
      maxBatch: 16,
      // OCR_RUN_BATCH: runs of that many samples (the manifest's runBatch), for A/B runs.
      ...(process.env.OCR_RUN_BATCH ? { runBatch: Number(process.env.OCR_RUN_BATCH) } : {}),
      // OCR_QUEUE_DELAY_MS: another maxQueueDelayMs, for A/B runs.
      maxQueueDelayMs: process.env.OCR_QUEUE_DELAY_MS ? Number(process.env.OCR_QUEUE_DELAY_MS) : 2,
      executionProviders: ["cpu"],
      inputs: { x: { range: heavy ? [-10, 10] : [-1, 1] } },
    },
  });
  const apiPort = await freePort();
  const api = await startProc("api", "api", apiEnv(fleet.env, apiPort), fleet.logDir, apiPort, opts);
  const port = await freePort();
  const worker = await startProc(
    "worker",
    "worker",
    workerEnv(fleet.env, port, workerName, { WORKER_MODELS: "ocr-cls" }),
    fleet.logDir,
    port,
    opts,
  );
  return {
    fleet,
    api,
    worker,
    close: async () => {
      await worker.stop();
      await api.stop();
      // What NODE_ARGS flags print (--trace-gc, --trace-deopt) is in the apps' logs, whose
      // directory goes with the fleet's: a copy of them outlives the run.
      if (process.env.NODE_ARGS) {
        const kept = path.join(os.tmpdir(), `citadel-${workerName}-logs`);
        rmSync(kept, { recursive: true, force: true });
        cpSync(fleet.logDir, kept, { recursive: true });
        say(`the API's and the worker's logs: ${kept}`);
      }
      await fleet.close();
      await own.close();
    },
  };
}
