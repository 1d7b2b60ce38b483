import type { DType } from "@citadel/contracts";

/** A tensor crossing the thread boundary: its bytes travel as a transferred ArrayBuffer. */
export interface WireTensor {
  dtype: DType;
  shape: number[];
  buffer: ArrayBuffer;
}

export type ProviderName = "tensorrt" | "cuda" | "cpu";

export type ToRunner =
  | { type: "load"; model: ArrayBuffer; providers: ProviderName[]; deviceId: number; threads: number }
  /** Queued in the thread; runs one at a time, in the order they were sent. */
  | { type: "run"; id: number; feeds: Record<string, WireTensor>; outputs: string[] }
  /** Drop a queued run that has not begun (answered with "skipped"; a run already begun is not stopped). */
  | { type: "skip"; id: number }
  /** Release the session and end the thread (after any run in progress returns). */
  | { type: "exit" };

export type FromRunner =
  | { type: "loaded"; provider: ProviderName; inputs: IoMeta[]; outputs: IoMeta[]; attempts: ProviderAttempt[] }
  | { type: "load-failed"; message: string; attempts: ProviderAttempt[] }
  /** Sent as a run begins: its timeout counts from here. */
  | { type: "started"; id: number }
  | { type: "skipped"; id: number }
  | { type: "result"; id: number; outputs: Record<string, WireTensor>; ms: number }
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
