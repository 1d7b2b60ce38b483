import { CitadelError, ModelName } from "@citadel/contracts";

/** One BullMQ queue per model. */
export function queueName(model: string): string {
  return `infer-${model}`;
}

/**
 * Public job ids carry their model (names cannot hold '.') so a lookup needs no
 * index; the random part makes them unguessable.
 */
export function jobIdFor(model: string, random: string): string {
  return `${model}.${random}`;
}

export function modelOfJobId(id: string): string {
  const model = id.slice(0, id.indexOf("."));
  if (!ModelName.safeParse(model).success || !/^[a-z0-9-]+\.[A-Za-z0-9_-]{16,64}$/.test(id)) {
    throw new CitadelError("JOB_NOT_FOUND", "no such job");
  }
  return model;
}

/** Redis keys outside BullMQ, under the same hash-tagged prefix. */
export const keys = {
  cancelled: (prefix: string, id: string) => `${prefix}:cancelled:${id}`,
  cancelRequested: (prefix: string, id: string) => `${prefix}:cancel-requested:${id}`,
  cancelChannel: (prefix: string) => `${prefix}:cancel`,
  /** Per-tenant queued jobs and input bytes: added by the API on accept, released when a job settles. */
  tenantQueuedJobs: (prefix: string, tenant: string) => `${prefix}:queued-jobs:${tenant}`,
  tenantQueuedBytes: (prefix: string, tenant: string) => `${prefix}:queued-bytes:${tenant}`,
  /**
   * A job's reservation in its tenant's counters (value: its input bytes), set when the
   * API reserves and deleted by whoever releases it: release happens at most once per
   * job, whoever races to it (a cancel and a worker settling the same job).
   */
  quotaHeld: (prefix: string, tenant: string, jobId: string) => `${prefix}:quota-held:${tenant}:${jobId}`,
  /** An Idempotency-Key's entry (a hash: job id, fingerprint, state; see apps/api idempotency.ts). */
  idempotency: (prefix: string, tenant: string, keyHash: string) => `${prefix}:idempotency:${tenant}:${keyHash}`,
  /** BullMQ's hash for a job (as Queue.toKey builds it), present in every state until the job is removed. */
  job: (prefix: string, model: string, id: string) => `${prefix}:${queueName(model)}:${id}`,
};

/**
 * Releases a settled job's share of its tenant's queue quota, once: only the caller that
 * deletes the job's reservation marker (KEYS[3], holding its bytes) gives the share back.
 * Never below zero. Returns 1 when this call released it, 0 when it was already released.
 */
export const RELEASE_QUOTA = `
local bytes = redis.call('GET', KEYS[3])
if not bytes then return 0 end
redis.call('DEL', KEYS[3])
local j = redis.call('DECR', KEYS[1])
if j < 0 then redis.call('SET', KEYS[1], 0) end
local b = redis.call('DECRBY', KEYS[2], bytes)
if b < 0 then redis.call('SET', KEYS[2], 0) end
return 1
`;

/**
 * A job's bookkeeping once it is final, sent right after its moveToFinished in the
 * worker's settle pipeline (same connection, so it sees that move's effect). It acts
 * only when the job is final — its hash gone (removed) or carrying finishedOn — so a
 * job whose lock was lost and that runs again elsewhere keeps its inputs and quota
 * share. Then: the input bytes key goes, the hash's data is replaced by its
 * inputs-free copy (ARGV[1]), and the quota share is released once (RELEASE_QUOTA).
 * KEYS[1..3] as RELEASE_QUOTA's; KEYS[4] the job's hash; KEYS[5] its input bytes.
 * Returns -1 when the job is not final, else RELEASE_QUOTA's answer. All keys share
 * the prefix's hash tag (one slot); a per-queue tag would need this split in two.
 */
export const SETTLE_FINAL = `
local exists = redis.call('EXISTS', KEYS[4]) == 1
if exists and redis.call('HEXISTS', KEYS[4], 'finishedOn') == 0 then return -1 end
redis.call('DEL', KEYS[5])
if exists then redis.call('HSET', KEYS[4], 'data', ARGV[1]) end
${RELEASE_QUOTA}`;
