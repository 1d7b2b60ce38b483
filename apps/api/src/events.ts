import { CitadelError, type JobView, publicError } from "@citadel/contracts";
import { followJob, type JobQueues } from "@citadel/queue";
import type { Tenant } from "@citadel/tenants";
import type { FastifyReply, FastifyRequest } from "fastify";

/**
 * The event streams open in this process: at most `maxPerTenant` per tenant (each holds
 * a connection and listeners for up to the longest wait), all ended when the server
 * closes (a stream must not hold a graceful shutdown for minutes).
 */
export class EventStreams {
  private readonly open = new Map<string, Set<AbortController>>();

  constructor(private readonly maxPerTenant: number) {}

  /**
   * A new stream's abort signal (and a way to abort it), or RATE_LIMITED when the tenant
   * holds too many; call `done` once it ends.
   */
  take(tenant: string): { signal: AbortSignal; abort: () => void; done: () => void } {
    const set = this.open.get(tenant) ?? new Set();
    if (set.size >= this.maxPerTenant) {
      throw new CitadelError(
        "RATE_LIMITED",
        `at most ${this.maxPerTenant} event streams may be open at once; close one, or poll GET /v1/jobs/{id}?wait=ms`,
        { scope: "streams", limit: this.maxPerTenant },
      );
    }
    const ac = new AbortController();
    set.add(ac);
    this.open.set(tenant, set);
    return {
      signal: ac.signal,
      abort: () => ac.abort(),
      done: () => {
        set.delete(ac);
        if (set.size === 0 && this.open.get(tenant) === set) this.open.delete(tenant);
      },
    };
  }

  count(tenant: string): number {
    return this.open.get(tenant)?.size ?? 0;
  }

  abortAll(): void {
    for (const set of this.open.values()) for (const ac of set) ac.abort();
  }
}

export interface JobEventsOptions {
  queues: JobQueues;
  streams: EventStreams;
  /** How long a stream follows a job at most (MAX_WAIT_MS, as GET ?wait): then it ends, and EventSource reconnects. */
  maxWaitMs: number;
  heartbeatMs: number;
}

/** How soon an EventSource reconnects after a stream ends before its job did. */
const RETRY_MS = 2000;

/**
 * GET /v1/jobs/{id}/events as Server-Sent Events: the job's view at once (event name:
 * its status), then its view at each change of status, the final one (`completed`,
 * `failed` or `cancelled`, the completed one with its result as GET shows it) last,
 * then the stream ends. A comment line every `heartbeatMs` keeps it open through
 * proxies. Past `maxWaitMs` it ends without a final event: an EventSource reconnects
 * (after `retry`) and gets the current view first. Another tenant's job, or none, is
 * 404 before the stream starts; a client that leaves releases the job's listeners at once.
 */
export async function streamJobEvents(
  req: FastifyRequest,
  reply: FastifyReply,
  id: string,
  o: JobEventsOptions,
): Promise<void> {
  const tenant = (req.tenant as Tenant).id;
  const stream = o.streams.take(tenant);
  const res = reply.raw;
  // The client hung up (or the stream ended): the follower lets go of the job's listeners.
  res.on("close", stream.abort);
  let heartbeat: NodeJS.Timeout | undefined;
  let started = false;
  const start = () => {
    started = true;
    reply.hijack();
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache, no-transform",
      "x-accel-buffering": "no",
    });
    res.write(`retry: ${RETRY_MS}\n\n`);
    heartbeat = setInterval(() => res.write(": keep-alive\n\n"), o.heartbeatMs);
  };
  const send = (event: string, data: unknown) => {
    if (!started) start();
    res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  };
  try {
    await followJob(o.queues, id, tenant, o.maxWaitMs, (v: JobView) => send(v.status, v), stream.signal);
  } catch (err) {
    // Before the stream started (no such job, another tenant's): an ordinary error answer.
    if (!started) {
      stream.done();
      throw err;
    }
    const e = err instanceof CitadelError ? publicError(err) : { code: "INTERNAL", message: "internal error" };
    req.log.warn({ err, jobId: id }, "an event stream failed");
    send("error", { error: e });
  }
  // A client that left before the first event still gets a well-formed (empty) answer.
  if (!started) start();
  clearInterval(heartbeat);
  stream.done();
  res.end();
}
