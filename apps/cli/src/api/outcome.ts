import type { JobStatus, JobView } from "@citadel/contracts";
import type { ApiClient } from "./client.js";

/** Exit codes of the job verbs (docs/api.md, "The citadel CLI"). */
export const EXIT = { completed: 0, error: 1, failed: 2, cancelled: 3, notFinal: 4 } as const;

/**
 * A long poll is at most this long: the API refuses a `wait` over its MAX_WAIT_MS
 * (30 s by default), so longer waits are several polls.
 */
export const POLL_CHUNK_MS = 10_000;

export const isFinal = (s: JobStatus): boolean => s === "completed" || s === "failed" || s === "cancelled";

/** The exit code for a job's view, and the one line to print on stderr when it is not 0. */
export function outcomeOf(view: JobView, waitedMs?: number): { code: number; message?: string } {
  switch (view.status) {
    case "completed":
      return { code: EXIT.completed };
    case "failed":
      return {
        code: EXIT.failed,
        message: `job ${view.id} failed: ${view.error ? `${view.error.code}: ${view.error.message}` : "no error given"}`,
      };
    case "cancelled":
      return { code: EXIT.cancelled, message: `job ${view.id} was cancelled` };
    case "queued":
    case "active":
      return {
        code: EXIT.notFinal,
        message:
          waitedMs === undefined
            ? `job ${view.id} is ${view.status}, not final yet`
            : `job ${view.id} is still ${view.status} after ${waitedMs} ms`,
      };
  }
}

/**
 * Long-polls GET /v1/jobs/{id}?wait= until the job is final or `timeoutMs` passes
 * (no bound when undefined; a job ends at the latest when its queue TTL does).
 */
export async function waitFinal(
  client: ApiClient,
  id: string,
  timeoutMs: number | undefined,
  start: number = Date.now(),
): Promise<JobView> {
  const deadline = timeoutMs === undefined ? Number.POSITIVE_INFINITY : start + timeoutMs;
  for (;;) {
    const left = deadline - Date.now();
    const view = await client.get(id, Math.max(0, Math.min(POLL_CHUNK_MS, left)));
    if (isFinal(view.status) || Date.now() >= deadline) return view;
  }
}
