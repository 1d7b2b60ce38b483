import { createBullBoard } from "@bull-board/api";
import { BullMQAdapter } from "@bull-board/api/bullMQAdapter";
import { FastifyAdapter } from "@bull-board/fastify";
import type { AuditSink } from "@citadel/audit";
import { CitadelError } from "@citadel/contracts";
import type { JobQueues } from "@citadel/queue";
import { safeEqual } from "@citadel/tenants";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ModelCatalog } from "./catalog.js";

export interface BoardOptions {
  admin: { user: string; password: string };
  /** Read-only operators: they see everything the admin sees and change nothing. */
  ops?: { user: string; password: string };
}

const MUTATING = new Set(["POST", "PUT", "PATCH", "DELETE"]);
export const BOARD_PATH = "/admin/queues";

/** What the board may show of a job: never tensors, results or tenant secrets. */
export function redactJobData(data: unknown): unknown {
  const d = (data ?? {}) as Record<string, unknown>;
  const inputs =
    d.inputs && typeof d.inputs === "object" ? (d.inputs as Record<string, { dtype?: string; shape?: number[] }>) : {};
  return {
    tenant: d.tenant,
    model: d.model,
    version: d.version,
    batch: d.batch,
    inputBytes: d.inputBytes,
    timeoutMs: d.timeoutMs,
    deadline: d.deadline,
    requestId: d.requestId,
    inputs: Object.fromEntries(
      Object.entries(inputs).map(([k, t]) => [k, { dtype: t?.dtype, shape: t?.shape, data: "[redacted]" }]),
    ),
  };
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
export async function registerBoard(
  app: FastifyInstance,
  opts: BoardOptions,
  queues: JobQueues,
  catalog: ModelCatalog,
  audit: AuditSink,
): Promise<void> {
  const serverAdapter = new FastifyAdapter();
  serverAdapter.setBasePath(BOARD_PATH);
  const adapterFor = (model: string) => {
    const a = new BullMQAdapter(queues.queue(model), { allowRetries: true, description: `model ${model}` });
    a.setFormatter("data", redactJobData);
    a.setFormatter("returnValue", redactReturnValue);
    return a;
  };
  const board = createBullBoard({
    queues: catalog.models().map(adapterFor),
    serverAdapter,
    options: { uiConfig: { boardTitle: "Citadel" } },
  });
  const shown = new Set(catalog.models());
  const sync = () => {
    for (const m of catalog.models()) {
      if (shown.has(m)) continue;
      shown.add(m);
      board.addQueue(adapterFor(m));
    }
  };

  await app.register(async (scope) => {
    scope.addHook("onRequest", async (req: FastifyRequest, reply: FastifyReply) => {
      const c = credentials(req);
      const role =
        c && c.user === opts.admin.user && safeEqual(c.password, opts.admin.password)
          ? "admin"
          : c && opts.ops && c.user === opts.ops.user && safeEqual(c.password, opts.ops.password)
            ? "ops-read"
            : null;
      if (!role) {
        // A first request without credentials is the browser's cue to prompt; wrong ones are denials.
        if (c)
          audit.record("auth.denied", { clientIp: req.ip, requestId: req.id, detail: "board credentials rejected" });
        // Answered here, not thrown: a thrown error would reach Bull Board's own error
        // handler (the innermost one) and become a 500 without the Basic challenge.
        return reply
          .code(401)
          .header("www-authenticate", 'Basic realm="citadel-board", charset="UTF-8"')
          .send(new CitadelError("UNAUTHORIZED", "board credentials required").toJSON());
      }
      if (role === "ops-read" && MUTATING.has(req.method)) {
        audit.record("auth.denied", {
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
