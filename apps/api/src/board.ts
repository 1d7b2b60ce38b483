import { createBullBoard } from "@bull-board/api";
import { BullMQAdapter } from "@bull-board/api/bullMQAdapter";
import { FastifyAdapter } from "@bull-board/fastify";
import { CitadelError } from "@citadel/contracts";
import { type JobQueues, queueName } from "@citadel/queue";
import type { Bucket, DenialAggregator, ModelCatalog, RateLimiter } from "@citadel/submit";
import { safeEqual } from "@citadel/tenants";
import type { Queue } from "bullmq";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ApiMetrics } from "./metrics.js";

export interface BoardOptions {
  admin: { user: string; password: string };
  /** Read-only operators: they see everything the admin sees and change nothing. */
  ops?: { user: string; password: string };
  /** Failed logins per client address: a token bucket (per second, burst) each failure takes from. */
  login: { rate: number; burst: number };
}

export interface BoardDeps {
  /** The webhook delivery queue (when webhooks are on): shown with its jobs' targets reduced to their origin. */
  webhookQueue?: Queue;
  queues: JobQueues;
  catalog: ModelCatalog;
  denials: DenialAggregator;
  limiter: RateLimiter;
  metrics: ApiMetrics;
}

const MUTATING = new Set(["POST", "PUT", "PATCH", "DELETE"]);
export const BOARD_PATH = "/admin/queues";

/** What the board may show of a job: never tensors, results or tenant secrets. */
export function redactJobData(data: unknown): unknown {
  const d = (data ?? {}) as Record<string, unknown>;
  // Job data describes its inputs (their bytes are stored apart); only names, dtypes and shapes are shown.
  const inputs = Array.isArray(d.inputs) ? (d.inputs as { name?: string; dtype?: string; shape?: number[] }[]) : [];
  return {
    tenant: d.tenant,
    model: d.model,
    version: d.version,
    batch: d.batch,
    inputBytes: d.inputBytes,
    timeoutMs: d.timeoutMs,
    deadline: d.deadline,
    requestId: d.requestId,
    inputs: inputs.map((t) => ({ name: t?.name, dtype: t?.dtype, shape: t?.shape })),
  };
}

/** What the board may show of a webhook delivery: never its body (client labels) or its URL's path and query. */
export function redactDelivery(data: unknown): unknown {
  const d = (data ?? {}) as Record<string, unknown>;
  let target = "the tenant's callback URL";
  if (typeof d.url === "string") {
    try {
      target = new URL(d.url).origin;
    } catch {
      target = "[invalid URL]";
    }
  }
  return { tenant: d.tenant, type: d.type, msgId: d.msgId, target };
}

export function redactReturnValue(rv: unknown): unknown {
  const r = (rv ?? {}) as Record<string, unknown>;
  return {
    provider: r.provider,
    batchSize: r.batchSize,
    queueMs: r.queueMs,
    inferenceMs: r.inferenceMs,
    outputs: "[redacted]",
  };
}

function credentials(req: FastifyRequest): { user: string; password: string } | null {
  const h = req.headers.authorization;
  if (!h?.startsWith("Basic ")) return null;
  const raw = Buffer.from(h.slice(6), "base64").toString("utf8");
  const i = raw.indexOf(":");
  return i < 0 ? null : { user: raw.slice(0, i), password: raw.slice(i + 1) };
}

/**
 * Bull Board in its own encapsulated scope: every route and static asset sits behind
 * Basic auth (browsers handle it natively), ops-read may only read (mutations 405),
 * and job payloads and results are redacted by the adapters' formatters.
 */
export async function registerBoard(app: FastifyInstance, opts: BoardOptions, deps: BoardDeps): Promise<void> {
  const { queues, catalog, denials, limiter, metrics } = deps;
  const serverAdapter = new FastifyAdapter();
  serverAdapter.setBasePath(BOARD_PATH);
  const adapterFor = (model: string) => {
    const a = new BullMQAdapter(queues.queue(model), { allowRetries: true, description: `model ${model}` });
    a.setFormatter("data", redactJobData);
    a.setFormatter("returnValue", redactReturnValue);
    return a;
  };
  const deliveries = deps.webhookQueue
    ? [new BullMQAdapter(deps.webhookQueue, { allowRetries: true, description: "webhook deliveries" })]
    : [];
  for (const a of deliveries) a.setFormatter("data", redactDelivery);
  const board = createBullBoard({
    queues: [...catalog.models().map(adapterFor), ...deliveries],
    serverAdapter,
    options: { uiConfig: { boardTitle: "Citadel" } },
  });
  const shown = new Set(catalog.models());
  const sync = () => {
    const now = new Set(catalog.models());
    for (const m of now) {
      if (shown.has(m)) continue;
      shown.add(m);
      board.addQueue(adapterFor(m));
    }
    // A model taken out of the registry: its queue handle is closed (JobQueues.retain), so the board lets go too.
    for (const m of [...shown]) {
      if (now.has(m)) continue;
      shown.delete(m);
      board.removeQueue(queueName(m));
    }
  };
  const challenge = (reply: FastifyReply) =>
    reply
      .code(401)
      .header("www-authenticate", 'Basic realm="citadel-board", charset="UTF-8"')
      .send(new CitadelError("UNAUTHORIZED", "board credentials required").toJSON());

  await app.register(async (scope) => {
    scope.addHook("onRequest", async (req: FastifyRequest, reply: FastifyReply) => {
      const c = credentials(req);
      // A first request without credentials is the browser's cue to prompt: counted, not audited.
      // Answered here, not thrown: a thrown error would reach Bull Board's own error
      // handler (the innermost one) and become a 500 without the Basic challenge.
      if (!c) {
        metrics.boardDenials.inc({ reason: "no_credentials" });
        return challenge(reply);
      }
      // Every attempt with credentials takes a token before the password is looked at (a
      // success gives it back), so concurrent guesses cannot outrun the limit; past it the
      // password is not checked at all.
      const bucket: Bucket = { scope: "board-login", id: req.ip, ...opts.login };
      const gate = await limiter.takeAll([bucket]);
      if (!gate.allowed) {
        metrics.boardDenials.inc({ reason: "rate_limited" });
        denials.note({ event: "rate.limited", clientIp: req.ip, requestId: req.id, detail: "board logins" });
        return reply
          .code(429)
          .header("retry-after", Math.max(1, Math.ceil(gate.retryAfterMs / 1000)))
          .send(
            new CitadelError("RATE_LIMITED", "too many failed board logins from this address; retry later").toJSON(),
          );
      }
      const role =
        c && c.user === opts.admin.user && safeEqual(c.password, opts.admin.password)
          ? "admin"
          : c && opts.ops && c.user === opts.ops.user && safeEqual(c.password, opts.ops.password)
            ? "ops-read"
            : null;
      if (!role) {
        metrics.boardDenials.inc({ reason: "bad_credentials" });
        denials.note({
          event: "auth.denied",
          clientIp: req.ip,
          requestId: req.id,
          detail: "board credentials rejected",
        });
        return challenge(reply);
      }
      await limiter.refund(bucket);
      if (role === "ops-read" && MUTATING.has(req.method)) {
        metrics.boardDenials.inc({ reason: "read_only" });
        denials.note({
          event: "auth.denied",
          clientIp: req.ip,
          requestId: req.id,
          detail: `ops-read attempted ${req.method}`,
        });
        return reply.code(405).send({ error: { code: "FORBIDDEN", message: "the ops-read role is read-only" } });
      }
      sync();
      return undefined;
    });
    await scope.register(serverAdapter.registerPlugin(), { prefix: BOARD_PATH });
  });
}
