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

/**
 * A SCAN MATCH pattern for every key of the deployment whatever its family:
 * "{citadel}" → "{citadel[:}]*" (both "{citadel}:…" and "{citadel:q:m}:…"). Glob
 * characters in the prefix are escaped.
 */
export function deploymentKeyPattern(prefix: string): string {
  const glob = (t: string) => t.replace(/[*?[\\\]]/g, (c) => `\\${c}`);
  const open = prefix.indexOf("{");
  const close = open < 0 ? -1 : prefix.indexOf("}", open + 1);
  if (close > open + 1) return `${glob(prefix.slice(0, close))}[:}]*`;
  return `${glob(prefix)}:*`;
}

/** The BullMQ prefix of a model's queue: its own slot (BullMQ keeps a queue's keys in one). */
export function queuePrefix(prefix: string, model: string): string {
  return tagged(prefix, `q:${model}`);
}

/** What BullMQ prefixes a model queue's keys with (its Queue's `qualifiedName`): `<queue prefix>:<queue name>`. */
export function qualifiedQueueName(prefix: string, model: string): string {
  return `${queuePrefix(prefix, model)}:${queueName(model)}`;
}

/** The prefix of a tenant's quota, Idempotency-Key and rate-limit keys: one slot per tenant. */
export function tenantPrefix(prefix: string, tenant: string): string {
  return tagged(prefix, `t:${tenant}`);
}

/**
 * Citadel's Redis keys, each in its family's slot (docs/architecture.md lists them):
 * a model's queue family holds everything a job's settlement writes, a tenant's family
 * everything a submission reserves; the deployment's own tag (CITADEL_PREFIX) keeps
 * what is read through caches or written rarely (registry, tenants), batches, the
 * notifications stream and the webhook delivery queue.
 */
export const keys = {
  /** A cancelled job's tombstone (its view), in its queue's slot (the id names the model). */
  cancelled: (prefix: string, id: string) => `${queuePrefix(prefix, modelOfJobId(id))}:cancelled:${id}`,
  /** A cancel asked for (set by the API before it publishes the cancel), in its queue's slot. */
  cancelRequested: (prefix: string, id: string) => `${keys.cancelRequestedPrefix(prefix, modelOfJobId(id))}${id}`,
  /** What a model's cancel flags start with (the job id follows), as takeJobs-9.lua builds them. */
  cancelRequestedPrefix: (prefix: string, model: string) => `${queuePrefix(prefix, model)}:cancel-requested:`,
  cancelChannel: (prefix: string) => `${prefix}:cancel`,
  /** Per-tenant queued jobs and input bytes: added by the API on accept, released when a job's outbox entry is relayed. */
  tenantQueuedJobs: (prefix: string, tenant: string) => `${tenantPrefix(prefix, tenant)}:queued-jobs`,
  tenantQueuedBytes: (prefix: string, tenant: string) => `${tenantPrefix(prefix, tenant)}:queued-bytes`,
  /**
   * A job's reservation in its tenant's counters (value: its input bytes), set when the
   * API reserves and deleted by whoever releases it: release happens at most once per
   * job, however often its outbox entry is relayed.
   */
  quotaHeld: (prefix: string, tenant: string, jobId: string) => `${tenantPrefix(prefix, tenant)}:quota-held:${jobId}`,
  /** An Idempotency-Key's entry (a hash: job id, fingerprint, state; see packages/submit idempotency.ts). */
  idempotency: (prefix: string, tenant: string, keyHash: string) =>
    `${tenantPrefix(prefix, tenant)}:idempotency:${keyHash}`,
  /**
   * A batch (POST /v1/batches): a hash of its counters and state, and beside it the
   * lines as accepted or refused (line -> JSON) and their final outcomes (line -> JSON).
   * Tenant-scoped: another tenant's id names another key. All three expire at the
   * batch's retention end (BATCH_TTL_MS after it was created). In the deployment's slot,
   * beside the notifications stream their scripts append to.
   */
  batch: (prefix: string, tenant: string, id: string) => `${prefix}:batch:${tenant}:${id}`,
  batchLines: (prefix: string, tenant: string, id: string) => `${prefix}:batch:${tenant}:${id}:lines`,
  batchResults: (prefix: string, tenant: string, id: string) => `${prefix}:batch:${tenant}:${id}:results`,
  /**
   * Completion notifications waiting to be handed to the webhook delivery queue: a
   * stream the outbox relay and the batch scripts append to (job id, tenant, event;
   * never results), read by the API's notifier with a consumer group.
   */
  notifications: (prefix: string) => `${prefix}:notifications`,
  /** One of BullMQ's own keys of a model's queue (`wait`, `prioritized`, …), as BullMQ names it. */
  bull: (prefix: string, model: string, part: string) => `${qualifiedQueueName(prefix, model)}:${part}`,
  /** BullMQ's hash for a job (as Queue.toKey builds it), present in every state until the job is removed. */
  job: (prefix: string, model: string, id: string) => `${qualifiedQueueName(prefix, model)}:${id}`,
  /**
   * A job's input bytes (raw, back to back as its data describes them), written once by
   * the API before the job is added and deleted on the job's final outcome. Named after
   * the job's hash, so it shares the queue's slot.
   */
  inputs: (prefix: string, model: string, id: string) => `${qualifiedQueueName(prefix, model)}:${id}:in`,
  /**
   * A model queue's outbox: one entry per job that reached a final state, written in the
   * same script as that state's bookkeeping (scripts/finishJobs-9.lua for a worker's
   * outcomes, scripts/settleFinal-3.lua for a cancel),
   * so nothing a final state implies outside the queue's slot (quota release, batch
   * line, notification) can be lost; the API's outbox relay applies and deletes them.
   */
  outbox: (prefix: string, model: string) => `${queuePrefix(prefix, model)}:outbox`,
};

/** The BullMQ queue that delivers webhooks (keys `<prefix>:webhooks:*`), apart from every model's queue. */
export const WEBHOOK_QUEUE = "webhooks";

/**
 * A bound on the notifications stream (XADD MAXLEN ~): entries are deleted once handed
 * to the delivery queue, so only a notifier down for long comes near it.
 */
export const NOTIFICATIONS_MAX_LEN = 1_000_000;

/**
 * A bound on each queue's outbox stream (XADD MAXLEN ~): entries are deleted once
 * relayed, so only a relay down for long comes near it (then the oldest entries go, and
 * with them quota releases: the reservation markers' TTLs bound what that leaks).
 */
export const OUTBOX_MAX_LEN = 1_000_000;

/**
 * A model queue's BullMQ event stream bound (XADD MAXLEN ~): BullMQ's default
 * (`streams.events.maxLen`), which Citadel's queues keep; the worker's own settle
 * script trims to it as BullMQ's would.
 */
export const EVENTS_MAX_LEN = 10_000;

/**
 * How long stored inputs outlive their job's deadline at most: a job that started just
 * before its deadline may still run, be retried after a transient failure, and settle.
 * Every final outcome deletes them sooner; this only bounds what an orphan costs.
 */
export const INPUTS_GRACE_MS = 15 * 60_000;
