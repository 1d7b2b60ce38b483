import type { DType } from "@citadel/contracts";

/** A tensor crossing the thread boundary: its bytes travel as a transferred ArrayBuffer. */
export interface WireTensor {
  dtype: DType;
  shape: number[];
  buffer: ArrayBuffer;
}

/**
 * A batch run as several runs, back to back in the thread: each batched input cut along
 * its batch axis into runs of `sizes` samples (an input whose axis is null goes whole
 * to every run), and each output joined back along its own.
 */
export interface RunParts {
  sizes: number[];
  inputAxes: Record<string, number | null>;
  outputAxes: Record<string, number | null>;
}

/**
 * Shared with the thread (workerData.progress), two BigInt64 slots: the id of the run
 * whose part is running, then when that part began (µs since the epoch, from
 * performance.timeOrigin + now()). A run in parts says when each part begins through
 * it, not by a message a part, since each part's timeout counts from its own start.
 */
export const PROGRESS_BYTES = 16;

export type ProviderName = "tensorrt" | "cuda" | "cpu";

export type ToRunner =
  | { type: "load"; model: ArrayBuffer; providers: ProviderName[]; deviceId: number; threads: number }
  /** Queued in the thread; runs one at a time, in the order they were sent. */
  | { type: "run"; id: number; feeds: Record<string, WireTensor>; outputs: string[]; parts?: RunParts }
  /** Drop a queued run that has not begun (answered with "skipped"; a run already begun is not stopped). */
  | { type: "skip"; id: number }
  /** Release the session and end the thread (after any run in progress returns). */
  | { type: "exit" };

export type FromRunner =
  | { type: "loaded"; provider: ProviderName; inputs: IoMeta[]; outputs: IoMeta[]; attempts: ProviderAttempt[] }
  | { type: "load-failed"; message: string; attempts: ProviderAttempt[] }
  /** Sent as a run begins: its timeout counts from here (a later part's from its own start, in progress). */
  | { type: "started"; id: number }
  | { type: "skipped"; id: number }
  /** `runs`: each part's time inside session.run, in order; `ms` their sum. */
  | { type: "result"; id: number; outputs: Record<string, WireTensor>; ms: number; runs: number[] }
  | { type: "run-failed"; id: number; message: string };

export interface ProviderAttempt {
  provider: ProviderName;
  ok: boolean;
  error?: string;
}

export interface IoMeta {
  name: string;
  type: string;
  shape: (number | string)[];
}
