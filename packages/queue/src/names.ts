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

/**
 * A key family's prefix: CITADEL_PREFIX with its hash tag extended by the family
 * ("{citadel}" + "q:heavy" → "{citadel:q:heavy}"), so on a Redis Cluster each model's
 * queue, each tenant, each audit writer hashes to a slot of its own, while every key
 * still starts with the deployment's name (ACL patterns, scans). Keys one script or
 * MULTI touches together must share a family. A prefix without a tag (single Redis
 * only: refused on a cluster) gets the family as its tag.
 */
export function tagged(prefix: string, family: string): string {
  if (/[{}]/.test(family)) throw new Error(`a key family cannot hold braces: ${family}`);
  const open = prefix.indexOf("{");
  const close = open < 0 ? -1 : prefix.indexOf("}", open + 1);
  if (close > open + 1) return `${prefix.slice(0, close)}:${family}${prefix.slice(close)}`;
  return `${prefix}:{${family}}`;
}

/** The BullMQ prefix of a model's queue: its own slot (BullMQ keeps a queue's keys in one). */
export function queuePrefix(prefix: string, model: string): string {
  return tagged(prefix, `q:${model}`);
}

/** The prefix of a tenant's quota, Idempotency-Key and rate-limit keys: one slot per tenant. */
export function tenantPrefix(prefix: string, tenant: string): string {
  return tagged(prefix, `t:${tenant}`);
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
  /**
   * A batch (POST /v1/batches): a hash of its counters and state, and beside it the
   * lines as accepted or refused (line -> JSON) and their final outcomes (line -> JSON).
   * Tenant-scoped: another tenant's id names another key. All three expire at the
   * batch's retention end (BATCH_TTL_MS after it was created).
   */
  batch: (prefix: string, tenant: string, id: string) => `${prefix}:batch:${tenant}:${id}`,
  batchLines: (prefix: string, tenant: string, id: string) => `${prefix}:batch:${tenant}:${id}:lines`,
  batchResults: (prefix: string, tenant: string, id: string) => `${prefix}:batch:${tenant}:${id}:results`,
  /**
   * Completion notifications waiting to be handed to the webhook delivery queue: a
   * stream the settle scripts append to (job id, tenant, event; never results), read
   * by the API's notifier with a consumer group.
   */
  notifications: (prefix: string) => `${prefix}:notifications`,
  /** One of BullMQ's own keys of a model's queue (`wait`, `prioritized`, …), as BullMQ names it. */
  bull: (prefix: string, model: string, part: string) => `${prefix}:${queueName(model)}:${part}`,
  /** BullMQ's hash for a job (as Queue.toKey builds it), present in every state until the job is removed. */
  job: (prefix: string, model: string, id: string) => `${prefix}:${queueName(model)}:${id}`,
  /**
   * A job's input bytes (raw, back to back as its data describes them), written once by
   * the API before the job is added and deleted on the job's final outcome. Named after
   * the job's hash, so it shares the queue's hash tag and slot.
   */
  inputs: (prefix: string, model: string, id: string) => `${prefix}:${queueName(model)}:${id}:in`,
};

/** The BullMQ queue that delivers webhooks (keys `<prefix>:webhooks:*`), apart from every model's queue. */
export const WEBHOOK_QUEUE = "webhooks";

/**
 * A bound on the notifications stream (XADD MAXLEN ~): entries are deleted once handed
 * to the delivery queue, so only a notifier down for long comes near it.
 */
export const NOTIFICATIONS_MAX_LEN = 1_000_000;

/**
 * How long stored inputs outlive their job's deadline at most: a job that started just
 * before its deadline may still run, be retried after a transient failure, and settle.
 * Every final outcome deletes them sooner; this only bounds what an orphan costs.
 */
export const INPUTS_GRACE_MS = 15 * 60_000;
