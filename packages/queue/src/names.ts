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
  idempotency: (prefix: string, tenant: string, keyHash: string) => `${prefix}:idem:${tenant}:${keyHash}`,
};
