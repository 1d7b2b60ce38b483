import {
  CitadelError,
  coerceError,
  type EncodedTensor,
  type ManifestBody,
  type OutputPolicy,
} from "@citadel/contracts";
import { RunnerGoneError } from "@citadel/runtime";
import { applyOutputPolicy, concat, encodeTensor, mergePolicies, split, type Tensor } from "@citadel/tensors";
import { type BatchRunner, partSizes, runInParts, samplesPerRun } from "./run-parts.js";

export type { BatchRunner } from "./run-parts.js";

/**
 * The executor: runs one batch on a model and gives every job its own outcome, once.
 *
 * Each job keeps its own limits. A run is bounded by the model's timeout (the signed
 * manifest's), never by the smallest timeout in the batch: a job whose own
 * `timeoutMs` passes during the run gets TIMEOUT alone and the run goes on for the
 * others. A cancelled job is settled at once and its result dropped; the run is not
 * cut off for it (cutting a run off means abandoning and reloading the runner, which
 * one tenant must not be able to force on everyone). A run that fails — an error, or
 * the model's own timeout — with several jobs in it is split in halves and each half
 * run again, so a poison input ends up failing only its own job, with its own code.
 */

export interface ExecModel {
  manifest: ManifestBody;
  runner: BatchRunner;
}

/**
 * A job's cancel switch. Not an AbortController: one of those per job costs Node's
 * EventTarget machinery (~4% of a no-op job's main-thread time in the worker's capacity
 * profile), and a job has one listener at most (the executor's, while the job is in a
 * batch).
 */
export class JobCancel {
  #cancelled = false;
  #listener: (() => void) | null = null;

  get cancelled(): boolean {
    return this.#cancelled;
  }

  /** Cancels the job (once); its listener, if one is set, is called. */
  cancel(): void {
    if (this.#cancelled) return;
    this.#cancelled = true;
    const listener = this.#listener;
    this.#listener = null;
    listener?.();
  }

  /** Sets the one listener called on cancel (null clears it). */
  listen(listener: (() => void) | null): void {
    this.#listener = listener;
  }
}

/** A job ready to run: validated inputs and its own limits. */
export interface RunJob {
  id: string;
  tensors: Record<string, Tensor>;
  /** Samples along the batch axis. */
  samples: number;
  /** Outputs this job asked for (all, when it named none). */
  outputs: string[];
  policy?: OutputPolicy;
  /** This job's own execution timeout (≤ the manifest's). */
  timeoutMs: number;
  /** Epoch ms after which it must not start. */
  deadline: number;
  /** Cancelled when the job is. */
  cancel: JobCancel;
}

export type Outcome =
  | { ok: true; outputs: Record<string, EncodedTensor>; inferenceMs: number }
  /**
   * `requeue`: shutdown interrupted it, or its inputs went with a runner that is gone
   * before its run began; it goes back to the queue (its inputs are still in Redis).
   */
  | { ok: false; error: CitadelError; requeue?: boolean };

/** One run, for metrics and the circuit breaker. */
export interface RunReport {
  jobs: number;
  samples: number;
  ok: boolean;
  /** Time inside session.run (ok) or until the failure was known. */
  ms: number;
  error?: CitadelError;
  /** The failed run had several jobs and is being retried in halves (its failure may be one input's). */
  bisected?: boolean;
}

export interface ExecuteOptions {
  /** The model to run on; asked again before each run (a runner cut off after a timeout is replaced). */
  model: () => Promise<ExecModel>;
  /** Called exactly once per job, as soon as its outcome is known. */
  settle: (job: RunJob, outcome: Outcome) => Promise<void>;
  onRun: (r: RunReport) => void;
  /** Aborted on shutdown: the run is cut off and every unsettled job is requeued. */
  shutdown: AbortSignal;
  /**
   * Called once when the batch will not run again (every outcome is known, settling may
   * still be under way): the runner is free for the next batch from then on.
   */
  onRunsEnd?: () => void;
  /**
   * Whether the model runs its health probe (probe.ts), asked when a job failed alone
   * (RUNTIME_ERROR) and no other run of the batch succeeded: true puts the fault on the
   * job's input. Without it such a job keeps RUNTIME_ERROR.
   */
  modelWorks?: (job: RunJob) => Promise<boolean>;
  now?: () => number;
}

const BISECTABLE = new Set(["RUNTIME_ERROR", "TIMEOUT"]);
/** Runs again after the runner was gone before the run began (see runGroup). */
const MAX_GONE_RETRIES = 2;

/** How a batch's runs went: a batch in which some run succeeded had a bad input, not a bad model. */
export interface BatchSummary {
  okRuns: number;
  failedRuns: number;
  /** Jobs failed INPUT_FAULT: the model ran without them (another run, or its probe). */
  inputFaults: number;
}

/** Runs `jobs` (which the batcher found compatible) and settles each; resolves when all are settled. */
export async function executeBatch(jobs: readonly RunJob[], o: ExecuteOptions): Promise<BatchSummary> {
  const now = o.now ?? Date.now;
  const summary: BatchSummary = { okRuns: 0, failedRuns: 0, inputFaults: 0 };
  const settled = new Set<RunJob>();
  const settling: Promise<void>[] = [];
  const settle = (job: RunJob, outcome: Outcome) => {
    if (settled.has(job)) return;
    settled.add(job);
    settling.push(o.settle(job, outcome));
  };
  const unsettled = (group: readonly RunJob[]) => group.filter((j) => !settled.has(j));
  const cancelled = (j: RunJob) =>
    settle(j, { ok: false, error: new CitadelError("CANCELLED", "the job was cancelled") });
  for (const j of jobs) j.cancel.listen(() => cancelled(j));

  // A job that failed alone is at fault when the model ran without it: another run of
  // this batch succeeded (the split isolated it), or the model runs its probe now. Not
  // retried then: a retry would fail again, beside other tenants' jobs.
  const inputAtFault = async (job: RunJob): Promise<boolean> => {
    if (summary.okRuns > 0) return true;
    if (!o.modelWorks || o.shutdown.aborted) return false;
    return o.modelWorks(job).catch(() => false);
  };

  /** `gone`: how many times in a row this group's runner was gone before its run began. */
  const runGroup = async (group: readonly RunJob[], gone = 0): Promise<void> => {
    const open = unsettled(group);
    if (open.length === 0) return;
    if (o.shutdown.aborted) {
      for (const j of open) settle(j, { ok: false, error: shutdownError(), requeue: true });
      return;
    }
    let model: ExecModel;
    try {
      model = await o.model();
    } catch (err) {
      // The model itself cannot be served (integrity, keys, load): every job gets that code.
      for (const j of unsettled(open)) settle(j, { ok: false, error: asCitadel(err, "MODEL_LOAD_FAILED") });
      return;
    }
    const { manifest, runner } = model;
    const samples = open.reduce((a, j) => a + j.samples, 0);
    const timers: NodeJS.Timeout[] = [];
    const started = performance.now();
    const sizes = partSizes(samples, samplesPerRun(manifest));
    // Jobs asking for less than the run's bound time out on their own, from when the run
    // starts. In several runs (each bounded by the model's timeout) every job does: the
    // model's timeout is each job's ceiling too.
    const startTimers = () => {
      for (const j of open) {
        if (j.timeoutMs >= manifest.timeoutMs && sizes.length === 1) continue;
        const t = setTimeout(() => {
          settle(j, {
            ok: false,
            error: new CitadelError("TIMEOUT", `inference exceeded the job's timeout of ${j.timeoutMs} ms`),
          });
        }, j.timeoutMs);
        t.unref();
        timers.push(t);
      }
    };
    try {
      const res = await runInParts(
        runner,
        manifest,
        buildFeeds(
          manifest,
          open.map((j) => j.tensors),
        ),
        outputsFor(manifest, open),
        sizes,
        manifest.timeoutMs,
        o.shutdown,
        startTimers,
      );
      for (const t of timers) clearTimeout(t);
      const perJob = splitOutputs(manifest, open, res.outputs);
      summary.okRuns++;
      for (const r of res.runs) o.onRun({ jobs: open.length, samples: r.samples, ok: true, ms: r.ms });
      const inferenceMs = Math.round(res.ms * 100) / 100;
      open.forEach((j, k) => {
        settle(j, { ok: true, outputs: perJob[k] ?? {}, inferenceMs });
      });
    } catch (err) {
      for (const t of timers) clearTimeout(t);
      const e = asCitadel(err, "RUNTIME_ERROR");
      let left = unsettled(open);
      if (o.shutdown.aborted) {
        for (const j of left) settle(j, { ok: false, error: shutdownError(), requeue: true });
        return;
      }
      // The runner died under an earlier batch (its timeout) while this run waited its
      // turn: nothing ran, so the same jobs run again on the runner the host replaces it
      // with, not failed, split or counted against the model (another tenant's slow input
      // must not fail this batch). Bounded: a runner gone every time is a failure. A lone
      // job's own input buffer went to that runner with the run (runner.ts takes a buffer
      // the bytes fill, uncopied) and is gone with it: that job goes back to the queue, its
      // inputs still in Redis, for a fresh read.
      if (err instanceof RunnerGoneError) {
        for (const j of left.filter(bytesGone)) settle(j, { ok: false, error: e, requeue: true });
        left = unsettled(left);
        if (gone < MAX_GONE_RETRIES || left.length === 0) return runGroup(left, gone + 1);
      }
      const bisect = left.length > 1 && BISECTABLE.has(e.code);
      summary.failedRuns++;
      o.onRun({ jobs: open.length, samples, ok: false, ms: performance.now() - started, error: e, bisected: bisect });
      if (!bisect) {
        const [only] = left;
        if (left.length === 1 && only && e.code === "RUNTIME_ERROR" && (await inputAtFault(only))) {
          summary.inputFaults++;
          settle(only, { ok: false, error: inputFault(e) });
          return;
        }
        for (const j of left) settle(j, { ok: false, error: e });
        return;
      }
      const half = Math.ceil(left.length / 2);
      await runGroup(left.slice(0, half));
      await runGroup(left.slice(half));
    }
  };

  try {
    const live: RunJob[] = [];
    for (const j of jobs) {
      if (j.cancel.cancelled) cancelled(j);
      else if (now() > j.deadline) {
        settle(j, {
          ok: false,
          error: new CitadelError("DEADLINE_EXCEEDED", "the job waited past its deadline and was not run"),
        });
      } else live.push(j);
    }
    await runGroup(live);
  } finally {
    for (const j of jobs) j.cancel.listen(null);
    o.onRunsEnd?.();
    await Promise.all(settling);
  }
  return summary;
}

function inputFault(cause: CitadelError): CitadelError {
  return new CitadelError("INPUT_FAULT", `the model failed on this job's input alone: ${cause.message}`, undefined, {
    cause,
  });
}

function shutdownError(): CitadelError {
  return new CitadelError("CANCELLED", "the worker is shutting down; the job returns to the queue");
}

function asCitadel(err: unknown, code: "RUNTIME_ERROR" | "MODEL_LOAD_FAILED"): CitadelError {
  if (err instanceof CitadelError) return err;
  return new CitadelError(
    code,
    code === "RUNTIME_ERROR" ? "inference failed" : "the model could not be loaded",
    undefined,
    {
      cause: coerceError(err),
    },
  );
}

/** Whether a job's input bytes went to a runner with its run (a detached buffer reads as empty). */
function bytesGone(j: RunJob): boolean {
  return Object.values(j.tensors).some((t) => t.data.byteLength === 0 && t.shape.every((d) => d > 0));
}

/** One set of feeds for the run: batched inputs concatenated along their axis, unbatched ones fed once. */
export function buildFeeds(
  manifest: Pick<ManifestBody, "inputs">,
  jobs: readonly Readonly<Record<string, Tensor>>[],
): Record<string, Tensor> {
  const feeds: Record<string, Tensor> = {};
  for (const spec of manifest.inputs) {
    const parts = jobs.map((j) => j[spec.name]).filter((t): t is Tensor => t !== undefined);
    if (parts.length !== jobs.length) throw new CitadelError("INTERNAL", `input '${spec.name}' is missing from a job`);
    feeds[spec.name] = spec.batchAxis === null ? (parts[0] as Tensor) : concat(parts, spec.batchAxis);
  }
  return feeds;
}

/** The union of the outputs the run's jobs asked for, in manifest order. */
export function outputsFor(
  manifest: Pick<ManifestBody, "outputs">,
  jobs: readonly Pick<RunJob, "outputs">[],
): string[] {
  const wanted = new Set(jobs.flatMap((j) => j.outputs));
  return manifest.outputs.map((o) => o.name).filter((n) => wanted.has(n));
}

/**
 * Cuts the run's outputs back into one result per job (each job's own samples), keeps
 * only what each job asked for, and applies its output policy before anything leaves
 * the worker.
 */
export function splitOutputs(
  manifest: Pick<ManifestBody, "outputs" | "outputPolicy">,
  jobs: readonly Pick<RunJob, "samples" | "outputs" | "policy">[],
  outputs: Record<string, Tensor>,
): Record<string, EncodedTensor>[] {
  const sizes = jobs.map((j) => j.samples);
  const perJob: Record<string, Tensor>[] = jobs.map(() => ({}));
  for (const spec of manifest.outputs) {
    const t = outputs[spec.name];
    if (!t) continue;
    // A job alone owns the whole output; several share a run only when every output has a batch axis.
    let parts: Tensor[];
    if (jobs.length === 1) parts = [t];
    else if (spec.batchAxis === null) throw new CitadelError("INTERNAL", `output '${spec.name}' cannot be split`);
    else parts = split(t, spec.batchAxis, sizes);
    parts.forEach((p, k) => {
      const job = perJob[k];
      if (job && jobs[k]?.outputs.includes(spec.name)) job[spec.name] = p;
    });
  }
  return perJob.map((outs, k) => {
    const shaped = applyOutputPolicy(outs, mergePolicies(manifest.outputPolicy, jobs[k]?.policy));
    const encoded: Record<string, EncodedTensor> = {};
    for (const [name, t] of Object.entries(shaped)) encoded[name] = encodeTensor(t);
    return encoded;
  });
}
