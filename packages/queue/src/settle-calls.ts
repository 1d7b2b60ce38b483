import type { JobData } from "@citadel/contracts";
import { keys, OUTBOX_MAX_LEN } from "./names.js";
import type {
  FinishedJob,
  FinishJobsQueueKeys,
  SettleFinalArgs,
  SettleFinalKeys,
  TakeJobsKeys,
} from "./scripts/index.js";

/**
 * settleFinal-3.lua's keys and arguments for a job of `model`: what its outbox entry
 * must carry comes from its data (none when that could not be read: an invalid
 * payload has no tenant to credit, no batch, no callback).
 */
export function settleFinalCall(
  prefix: string,
  model: string,
  jobId: string,
  data: JobData | null,
  fallback?: SettleFinalArgs["fallback"],
): { keys: SettleFinalKeys; args: SettleFinalArgs } {
  return {
    keys: [keys.job(prefix, model, jobId), keys.inputs(prefix, model, jobId), keys.outbox(prefix, model)],
    args: { jobId, ...outboxFields(data), fallback, maxLen: OUTBOX_MAX_LEN },
  };
}

/**
 * What a final job's outbox entry carries besides its outcome, from its data (none when
 * that could not be read: an invalid payload has no tenant to credit, no batch, no
 * callback). settleFinal-3.lua and finishJobs-9.lua take the same.
 */
export function outboxFields(data: JobData | null): Pick<SettleFinalArgs, "tenant" | "batch" | "notify"> {
  return {
    tenant: data?.tenant,
    batch: data?.batchRef ? { ...data.batchRef, customId: data.customId } : undefined,
    notify: data?.notify ? { url: data.notify.url } : undefined,
  };
}

/** finishJobs-9.lua's queue keys for `model`. */
export function finishJobsQueueKeys(prefix: string, model: string): FinishJobsQueueKeys {
  const bull = (part: string) => keys.bull(prefix, model, part);
  return [
    bull("wait"),
    bull("active"),
    bull("prioritized"),
    bull("events"),
    bull("stalled"),
    bull("meta"),
    bull("completed"),
    bull("failed"),
    keys.outbox(prefix, model),
  ];
}

/** takeJobs-9.lua's keys for `model`. */
export function takeJobsKeys(prefix: string, model: string): TakeJobsKeys {
  const bull = (part: string) => keys.bull(prefix, model, part);
  return [
    bull("wait"),
    bull("active"),
    bull("prioritized"),
    bull("events"),
    bull("delayed"),
    bull("meta"),
    bull("pc"),
    bull("marker"),
    bull("fair"),
  ];
}
