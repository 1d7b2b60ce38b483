/**
 * Rough worker capacity: jobs/s one worker settles from a pre-filled queue on an
 * identity model (no inference cost), through the real worker (lease, batcher,
 * executor, audit). Shared machines give rough figures only.
 *
 *   CITADEL_TEST_REDIS_URL=redis://127.0.0.1:6379 \
 *     npx tsx --conditions=@citadel/source test/perf/worker-capacity.ts [jobs] [maxBatch]
 */
import { randomBytes } from "node:crypto";
import type { JobData } from "@citadel/contracts";
import { buildIdentityModel } from "@citadel/onnx";
import { JobQueues, queueName } from "@citadel/queue";
import { Queue } from "bullmq";
import { startTestFleet } from "../support/fleet.js";

const jobs = Number(process.argv[2] ?? 5000);
const maxBatch = Number(process.argv[3] ?? 32);
const fleet = await startTestFleet({ workers: 0, env: { LOG_LEVEL: "warn" } });
try {
  await fleet.publish(buildIdentityModel("float32", ["N", 4]), {
    name: "ident",
    version: "1",
    spec: { maxBatch, maxQueueDelayMs: 2 },
  });
  const queues = new JobQueues(fleet.redis, () => fleet.redis.duplicate(), fleet.redis, {
    prefix: fleet.prefix,
    resultTtlMs: 600_000,
    failedTtlMs: 600_000,
    attempts: 1,
    backoffMs: 1000,
  });
  const x = Buffer.from(Float32Array.of(1, 2, 3, 4).buffer).toString("base64");
  for (let done = 0; done < jobs; done += 500) {
    const items = Array.from({ length: Math.min(500, jobs - done) }, () => {
      const data: JobData = {
        tenant: "acme",
        model: "ident",
        version: "1",
        inputs: { x: { dtype: "float32", shape: [1, 4], data: x } },
        batch: 1,
        inputBytes: 16,
        timeoutMs: 5000,
        acceptedAt: Date.now(),
        deadline: Date.now() + 600_000,
        requestId: "bench",
      };
      return { id: `ident.${randomBytes(18).toString("base64url")}`, data, priority: "normal" as const };
    });
    await queues.enqueueMany("ident", items);
  }
  const queue = new Queue(queueName("ident"), { connection: fleet.redis, prefix: fleet.prefix });
  await fleet.startWorker({ LOG_LEVEL: "warn" });
  let first = 0;
  let settled = 0;
  while (settled < jobs) {
    const c = await queue.getJobCounts("completed", "failed");
    settled = (c.completed ?? 0) + (c.failed ?? 0);
    if (settled > 0 && !first) first = performance.now();
    if ((c.failed ?? 0) > 0) throw new Error(`${c.failed} jobs failed`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const ms = performance.now() - first;
  console.log(
    JSON.stringify({ jobs, maxBatch, seconds: +(ms / 1000).toFixed(2), jobsPerSecond: Math.round(jobs / (ms / 1000)) }),
  );
  await queue.close();
  await queues.close();
} finally {
  await fleet.close();
}
