import type { CitadelClient } from "@citadel/client";
import { toView } from "@citadel/client";
import { type ApiTarget, clientFor, resolveTarget } from "../api/client.js";
import { EXIT, outcomeOf, waitFinal } from "../api/outcome.js";
import { reportError } from "../context.js";

export interface ApiFlags {
  api?: string;
  key?: string;
}

/** JSON on stdout: indented for a person at a terminal, one line for a pipe. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, process.stdout.isTTY ? 2 : undefined)}\n`);
}

/** Ends a job verb: the exit code, and its one line on stderr when the job did not complete. */
export function finish(outcome: { code: number; message?: string }): void {
  if (outcome.message) process.stderr.write(`citadel: ${outcome.message}\n`);
  process.exitCode = outcome.code;
}

/**
 * Runs a verb against the API (address and key from flags, env or the demo's state,
 * with a client that does not retry); errors print as one line.
 */
export async function withApi(
  flags: ApiFlags,
  fn: (client: CitadelClient, target: ApiTarget) => Promise<void>,
): Promise<void> {
  try {
    const target = resolveTarget(flags);
    await fn(clientFor(target), target);
  } catch (err) {
    reportError(err);
  }
}

export const jobsGet = (id: string, o: ApiFlags) =>
  withApi(o, async (client) => {
    const view = toView(await client.getJob(id, { binary: false }));
    printJson(view);
    finish(outcomeOf(view));
  });

export const jobsWait = (id: string, o: ApiFlags & { timeout?: number }) =>
  withApi(o, async (client) => {
    const view = await waitFinal(client, id, o.timeout);
    printJson(view);
    finish(outcomeOf(view, o.timeout));
  });

export const jobsCancel = (id: string, o: ApiFlags) =>
  withApi(o, async (client) => {
    const r = await client.cancel(id);
    printJson(r);
    // "cancelling": the job is running and stops at its next check; anything else was already final.
    if (r.status !== "cancelled" && r.status !== "cancelling")
      finish({ code: EXIT.error, message: `job ${id} is already ${r.status}; nothing to cancel` });
  });
