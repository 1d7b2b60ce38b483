import type { JobData } from "@citadel/contracts";
import type { Redis } from "ioredis";
import { keys } from "./names.js";
import { type BatchRecordArgs, type BatchRecordKeys, scripts } from "./scripts/index.js";

/** batchRecord-3.lua's keys and arguments for a batch job (its data carries the batch and line). */
export function batchRecordCall(
  prefix: string,
  jobId: string,
  data: JobData & { batchRef: NonNullable<JobData["batchRef"]> },
  fallback?: BatchRecordArgs["fallback"],
): { keys: BatchRecordKeys; args: BatchRecordArgs } {
  const { id, line } = data.batchRef;
  return {
    keys: [
      keys.job(prefix, data.model, jobId),
      keys.batch(prefix, data.tenant, id),
      keys.batchResults(prefix, data.tenant, id),
    ],
    args: { line, jobId, customId: data.customId, ...(fallback ? { fallback } : {}) },
  };
}

/** Records the line of a batch job a cancel removed from the queue (the worker records those it settles). */
export async function recordBatchLine(
  redis: Redis,
  prefix: string,
  jobId: string,
  data: JobData,
  finishedAt: number,
): Promise<void> {
  if (!data.batchRef) return;
  const call = batchRecordCall(
    prefix,
    jobId,
    { ...data, batchRef: data.batchRef },
    { status: "cancelled", finishedAt },
  );
  await scripts(redis).batchRecord(call.keys, call.args);
}
