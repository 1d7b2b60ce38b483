import { once } from "node:events";
import { createReadStream } from "node:fs";
import { open } from "node:fs/promises";
import { createInterface } from "node:readline";
import type { Writable } from "node:stream";
import { finished } from "node:stream/promises";
import { CitadelApiError, type CitadelClient, CitadelConnectionError, type JobInput, toView } from "@citadel/client";
import { JobRequest, type JobView } from "@citadel/contracts";
import { z } from "zod";
import { EXIT, POLL_CHUNK_MS, waitFinal } from "../api/outcome.js";
import { Progress, type Tally } from "../progress.js";
import { zodMessage } from "../zod-message.js";

export interface JsonlOptions {
  file: string;
  /** Results file; stdout when absent. */
  out?: string;
  concurrency: number;
  /** Per job, from its submit: a job not final by then is written as RESULT_PENDING. */
  timeout?: number;
}

const CustomId = z.union([z.string().min(1).max(256), z.number().int()]);
/** A line: the JSON body of POST /v1/jobs, plus the caller's own `custom_id` (not sent). */
const JsonlLine = JobRequest.extend({ custom_id: CustomId.optional() });

/** One results line: which input line, the job (when one was created), its status, and its result or error. */
export interface LineResult {
  line: number;
  custom_id?: string | number;
  id?: string;
  /** A job's status; `rejected` when no job was created (a malformed line or a refusal); `unknown` when reading it failed. */
  status: JobView["status"] | "rejected" | "unknown";
  result?: JobView["result"];
  error?: { code: string; message: string; httpStatus?: number };
}

/**
 * Tries of a line's submit after a 429 or 503 with Retry-After (the client's retries:
 * those that say nothing was queued), each Retry-After waited out whatever its length.
 */
export const SUBMIT_RETRY = { attempts: 5, maxDelayMs: Number.POSITIVE_INFINITY } as const;

/**
 * `citadel submit --jsonl FILE`: every line a job, submitted with at most `concurrency`
 * in flight (POST /v1/jobs?wait, then GET ?wait until final); the input is streamed,
 * never read whole. Every non-blank line gets one results line, in the order they
 * finish. A bad line is a result (its line number and code), not the end of the run;
 * an API that cannot be reached is. Exit 0 when every job completed, 2 otherwise.
 */
export async function submitJsonl(client: CitadelClient, o: JsonlOptions): Promise<number> {
  const total = await countLines(o.file);
  // Opened before anything is sent: a results file that cannot be written stops the run first.
  const out: Writable = o.out ? (await open(o.out, "w")).createWriteStream() : process.stdout;
  const tally: Tally = { done: 0, completed: 0, failed: 0, rejected: 0, inFlight: 0 };
  const progress = new Progress(total);
  const inFlight = new Set<Promise<void>>();
  let fatal: unknown;
  out.on("error", (err) => {
    fatal ??= err;
  });
  const write = async (r: LineResult) => {
    if (!out.write(`${JSON.stringify(r)}\n`)) await once(out, "drain");
    tally.done++;
    if (r.status === "completed") tally.completed++;
    else if (r.status === "rejected") tally.rejected++;
    else tally.failed++;
    progress.update(tally);
  };
  const lines = createInterface({ input: createReadStream(o.file), crlfDelay: Number.POSITIVE_INFINITY });
  try {
    let n = 0;
    for await (const text of lines) {
      n++;
      if (text.trim() === "") continue; // blank lines carry no job
      while (inFlight.size >= o.concurrency && fatal === undefined) await Promise.race(inFlight);
      if (fatal !== undefined) break;
      const task: Promise<void> = runLine(client, n, text, o.timeout)
        .then(async ({ result, unreachable }) => {
          await write(result);
          if (unreachable) fatal ??= unreachable;
        })
        .catch((err: unknown) => {
          fatal ??= err;
        })
        .finally(() => {
          inFlight.delete(task);
          tally.inFlight = inFlight.size;
          progress.update(tally);
        });
      inFlight.add(task);
      tally.inFlight = inFlight.size;
    }
    await Promise.all(inFlight);
  } finally {
    lines.close();
    progress.stop();
    if (out !== process.stdout) {
      out.end();
      await finished(out);
    }
  }
  process.stderr.write(
    `citadel: ${tally.done} lines: ${tally.completed} completed, ${tally.failed} not completed, ${tally.rejected} rejected${o.out ? ` (results in ${o.out})` : ""}\n`,
  );
  if (fatal !== undefined) throw fatal;
  return tally.completed === tally.done ? EXIT.completed : EXIT.failed;
}

/** Non-blank lines, counted by streaming the file (for the progress total; the file is not held). */
async function countLines(file: string): Promise<number> {
  let n = 0;
  for await (const text of createInterface({ input: createReadStream(file), crlfDelay: Number.POSITIVE_INFINITY }))
    if (text.trim() !== "") n++;
  return n;
}

/** One line, start to end. An unreachable API is returned beside the line's result (the run stops on it). */
async function runLine(
  client: CitadelClient,
  line: number,
  text: string,
  timeoutMs: number | undefined,
): Promise<{ result: LineResult; unreachable?: CitadelConnectionError }> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    const message = `line ${line}: ${err instanceof Error ? err.message : "not JSON"}`;
    return { result: { line, status: "rejected", error: { code: "MALFORMED_JSON", message } } };
  }
  const cid = CustomId.safeParse((raw as { custom_id?: unknown } | null)?.custom_id);
  const base = { line, ...(cid.success ? { custom_id: cid.data } : {}) };
  const parsed = JsonlLine.safeParse(raw);
  if (!parsed.success) {
    const message = `line ${line}: ${zodMessage(parsed.error.issues)}`;
    return { result: { ...base, status: "rejected", error: { code: "VALIDATION_FAILED", message } } };
  }
  // The line as written goes to the API (its judgement, not this schema's defaults), less custom_id.
  const { custom_id: _, ...request } = raw as Record<string, unknown>;
  const start = Date.now();
  let id: string | undefined;
  try {
    const first = await client.submitAndWait(request as unknown as JobInput, {
      waitMs: Math.min(timeoutMs ?? POLL_CHUNK_MS, POLL_CHUNK_MS),
      binary: false,
    });
    id = first.final ? first.job.id : first.accepted.id;
    const view = first.final ? toView(first.job) : await waitFinal(client, id, timeoutMs, start);
    return { result: { ...base, ...fromView(view, timeoutMs) } };
  } catch (err) {
    const withJob = id ? { id, status: "unknown" as const } : { status: "rejected" as const };
    if (err instanceof CitadelApiError) {
      return {
        result: { ...base, ...withJob, error: { code: err.code, message: err.message, httpStatus: err.status } },
      };
    }
    if (err instanceof CitadelConnectionError)
      return {
        result: { ...base, ...withJob, error: { code: "API_UNREACHABLE", message: err.message } },
        unreachable: err,
      };
    throw err;
  }
}

function fromView(view: JobView, timeoutMs: number | undefined): Omit<LineResult, "line" | "custom_id"> {
  const job = { id: view.id, status: view.status };
  switch (view.status) {
    case "completed":
      return { ...job, result: view.result };
    case "failed":
      return { ...job, error: view.error ?? { code: "INTERNAL", message: "failed with no error given" } };
    case "cancelled":
      return { ...job, error: { code: "CANCELLED", message: "the job was cancelled" } };
    case "queued":
    case "active":
      return {
        ...job,
        error: {
          code: "RESULT_PENDING",
          message: `not final after ${timeoutMs} ms; GET /v1/jobs/${view.id}?wait=<ms> answers it`,
        },
      };
  }
}
