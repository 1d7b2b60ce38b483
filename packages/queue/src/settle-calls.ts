import type { JobData } from "@citadel/contracts";
import type { Cluster, Redis } from "ioredis";
import { keys, NOTIFICATIONS_MAX_LEN } from "./names.js";
import {
  type BatchRecordArgs,
  type BatchRecordKeys,
  type NotifyFinalArgs,
  type NotifyFinalKeys,
  scripts,
} from "./scripts/index.js";

/** batchRecord-4.lua's keys and arguments for a batch job (its data carries the batch and line). */
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
      keys.notifications(prefix),
    ],
    args: {
      line,
      jobId,
      customId: data.customId,
      tenant: data.tenant,
      batchId: id,
      maxLen: NOTIFICATIONS_MAX_LEN,
      ...(fallback ? { fallback } : {}),
    },
  };
}

/** notifyFinal-2.lua's keys and arguments for a job whose outcome is notified (its data has `notify`). */
export function notifyFinalCall(
  prefix: string,
  jobId: string,
  data: JobData & { notify: NonNullable<JobData["notify"]> },
  fallback?: NotifyFinalArgs["fallback"],
): { keys: NotifyFinalKeys; args: NotifyFinalArgs } {
  return {
    keys: [keys.job(prefix, data.model, jobId), keys.notifications(prefix)],
    args: {
      jobId,
      tenant: data.tenant,
      url: data.notify.url,
      maxLen: NOTIFICATIONS_MAX_LEN,
      ...(fallback ? { fallback } : {}),
    },
  };
}

/**
 * The bookkeeping of a job a cancel removed from the queue (the worker does the same
 * for the jobs it settles): its batch line recorded, its notification added.
 */
export async function recordRemoved(
  redis: Redis | Cluster,
  prefix: string,
  jobId: string,
  data: JobData,
  finishedAt: number,
): Promise<void> {
  const fallback = { status: "cancelled" as const, finishedAt };
  if (data.batchRef) {
    const call = batchRecordCall(prefix, jobId, { ...data, batchRef: data.batchRef }, fallback);
    await scripts(redis).batchRecord(call.keys, call.args);
  }
  if (data.notify) {
    const call = notifyFinalCall(prefix, jobId, { ...data, notify: data.notify }, fallback);
    await scripts(redis).notifyFinal(call.keys, call.args);
  }
}
