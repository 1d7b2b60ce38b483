import { WebhookEventType } from "@citadel/contracts";

/**
 * An entry of the notifications stream, as the settle scripts write it
 * (packages/queue scripts notifyFinal-2.lua and includes/batchNotify.lua): what ended,
 * whose it is, the event, the URL the job or batch named ('' for its tenant's own) and
 * when it ended. Never a result or an input.
 */
export interface Notification {
  kind: "job" | "batch";
  id: string;
  tenant: string;
  type: WebhookEventType;
  /** The callback the job or batch named; undefined for its tenant's `callbackUrl`. */
  url: string | undefined;
  /** When it ended (epoch ms). */
  at: number;
}

/** A stream entry's flat field list as a notification, or undefined when it is not one (logged and dropped). */
export function parseNotification(fields: readonly string[]): Notification | undefined {
  const f = new Map<string, string>();
  for (let i = 0; i + 1 < fields.length; i += 2) f.set(fields[i] as string, fields[i + 1] as string);
  const kind = f.get("k");
  const type = WebhookEventType.safeParse(f.get("e"));
  const id = f.get("id");
  const tenant = f.get("t");
  const at = Number(f.get("f"));
  if ((kind !== "job" && kind !== "batch") || !type.success || !id || !tenant || !Number.isFinite(at)) return undefined;
  if (!type.data.startsWith(`${kind}.`)) return undefined;
  const url = f.get("u");
  return { kind, id, tenant, type: type.data, url: url ? url : undefined, at };
}

/** A job of the webhook delivery queue: one notification, its body fixed when it was queued. */
export interface DeliveryJob {
  tenant: string;
  type: WebhookEventType;
  /** webhook-id: the same on every attempt. */
  msgId: string;
  /** The URL the job or batch named; none for the tenant's `callbackUrl` (read at each attempt). */
  url?: string;
  /** The JSON body (a WebhookEvent), the same bytes on every attempt. */
  body: string;
}
