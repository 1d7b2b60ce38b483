import type { JobView } from "@citadel/contracts";
import { completedView, isFinal, type JobFinish, type JobQueues } from "./jobs.js";

/** What woke a follower: the job's final event, its move to active, the time bound, or the client leaving. */
type Wake =
  | { kind: "final"; finish: JobFinish | null }
  | { kind: "active" }
  | { kind: "timeout" }
  | { kind: "aborted" };

/**
 * Follows a job until it is final or `ms` pass (GET /v1/jobs/{id}/events): `send` gets
 * its current view at once, then its view at each change of status (active; final,
 * whose completed view is built from the completion event). It subscribes before the
 * first read, so no change is missed between them, and reads the job once per change
 * at most. It stops as soon as `signal` aborts (the client left) and always releases
 * its listeners. A job not visible to `tenant` throws JOB_NOT_FOUND before anything is
 * sent. Resolves with the last view sent.
 */
export async function followJob(
  queues: JobQueues,
  id: string,
  tenant: string,
  ms: number,
  send: (view: JobView) => void,
  signal: AbortSignal,
): Promise<JobView | undefined> {
  const deadline = Date.now() + ms;
  let pending: Wake | undefined;
  let wakeUp: ((w: Wake) => void) | undefined;
  const fire = (w: Wake) => {
    if (wakeUp) {
      const r = wakeUp;
      wakeUp = undefined;
      r(w);
    } else if (!pending || pending.kind === "active") {
      // A final event, a timeout or an abort outranks an unread move to active.
      pending = w;
    }
  };
  const next = (left: number) =>
    new Promise<Wake>((resolve) => {
      if (pending) {
        const p = pending;
        pending = undefined;
        resolve(p);
        return;
      }
      const timer = setTimeout(() => fire({ kind: "timeout" }), left);
      wakeUp = (w) => {
        clearTimeout(timer);
        resolve(w);
      };
    });
  const onAbort = () => fire({ kind: "aborted" });
  signal.addEventListener("abort", onAbort, { once: true });
  const stop = await queues.watch(id, {
    final: (finish) => fire({ kind: "final", finish }),
    active: () => fire({ kind: "active" }),
  });
  try {
    let last = await queues.view(id, tenant);
    if (signal.aborted) return undefined;
    send(last);
    while (!isFinal(last.status)) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      const w = await next(left);
      if (w.kind === "timeout" || w.kind === "aborted") break;
      const view =
        (w.kind === "final" &&
          w.finish &&
          completedView(
            id,
            last.model,
            last.version,
            { custom_id: last.custom_id, metadata: last.metadata },
            w.finish,
          )) ||
        (await queues.view(id, tenant));
      if (signal.aborted) break;
      if (view.status !== last.status) send(view);
      last = view;
    }
    return last;
  } finally {
    stop();
    signal.removeEventListener("abort", onAbort);
  }
}
