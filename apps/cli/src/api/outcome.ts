import { type CitadelClient, type JobInput, toView } from "@citadel/client";
import type { JobAccepted, JobStatus, JobView } from "@citadel/contracts";

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
 * Long-polls GET /v1/jobs/{id}?wait= until the job is final or `timeoutMs` after `start`
 * passes (no bound when undefined; a job ends at the latest when its queue TTL does).
 */
export async function waitFinal(
  client: CitadelClient,
  id: string,
  timeoutMs: number | undefined,
  start: number = Date.now(),
): Promise<JobView> {
  const left = timeoutMs === undefined ? undefined : Math.max(0, start + timeoutMs - Date.now());
  const job = await client.waitForJob(id, {
    ...(left !== undefined ? { timeoutMs: left } : {}),
    pollMs: POLL_CHUNK_MS,
    binary: false,
  });
  return toView(job);
}

/**
 * Submits a job. Without `waitMs`, answers the accepted job; with it, the job's view
 * once final or as it stands `waitMs` after the submit (the submit's own wait, up to
 * POLL_CHUNK_MS, then long polls). `binary`: the job's tensors go as bytes.
 */
export async function submitFollowing(
  client: CitadelClient,
  job: JobInput,
  waitMs: number | undefined,
  binary: boolean,
): Promise<{ accepted: JobAccepted } | { view: JobView }> {
  if (waitMs === undefined) return { accepted: await client.submit(job, { binary }) };
  const start = Date.now();
  const first = await client.submitAndWait(job, { waitMs: Math.min(waitMs, POLL_CHUNK_MS), binary });
  return { view: first.final ? toView(first.job) : await waitFinal(client, first.accepted.id, waitMs, start) };
}
