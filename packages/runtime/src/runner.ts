import { Worker } from "node:worker_threads";
import { CitadelError, DType } from "@citadel/contracts";
import { type Tensor, viewAs } from "@citadel/tensors";
import {
  type FromRunner,
  type IoMeta,
  PROGRESS_BYTES,
  type ProviderAttempt,
  type ProviderName,
  type RunParts,
  type ToRunner,
  type WireTensor,
} from "./protocol.js";

export type { IoMeta, ProviderAttempt, ProviderName, RunParts } from "./protocol.js";

export interface RunnerOptions {
  /** Providers to try in order; the first that creates a session wins. */
  providers: ProviderName[];
  /** Refuse to fall back to CPU: fail loudly if no GPU provider loads. */
  requireGpu?: boolean;
  deviceId?: number;
  /** onnxruntime intra-op threads (default: all cores). */
  threads?: number;
}

export interface LoadedInfo {
  provider: ProviderName;
  inputs: IoMeta[];
  outputs: IoMeta[];
  attempts: ProviderAttempt[];
}

export interface RunResult {
  outputs: Record<string, Tensor>;
  /** Time inside session.run, measured in the runner. */
  ms: number;
  /** A run in parts: each part's time inside session.run, in order (absent: one run). */
  runs?: number[];
}

/**
 * Hands the tensor's bytes to the runner: their buffer itself when they fill it (detached
 * here: a lone job's own input buffer, lease.ts, goes with its run), else a copy.
 */
function toWire(t: Tensor): { wire: WireTensor; transfer: ArrayBuffer } {
  const d = t.data;
  let buffer: ArrayBuffer;
  if (d.byteOffset === 0 && d.byteLength === d.buffer.byteLength && d.buffer instanceof ArrayBuffer) buffer = d.buffer;
  else {
    // Every byte is written at once, so the copy skips the zero-fill ArrayBuffer.slice
    // does (a 16-sample PaddleOCR input is 1.7 MB, and this is the worker's main thread).
    const copy = Buffer.allocUnsafeSlow(d.byteLength);
    copy.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
    buffer = copy.buffer as ArrayBuffer;
  }
  return { wire: { dtype: t.dtype, shape: t.shape, buffer }, transfer: buffer };
}

/**
 * The runner thread's entry, in the form this module runs as. Built (dist/runner.js):
 * the compiled runner-thread.js, plain Node. From source (vitest, tsx): a shim that
 * registers tsx in the thread, which also resolves workspace packages to their sources.
 */
const FROM_SOURCE = import.meta.url.endsWith(".ts");
const RUNNER_ENTRY = FROM_SOURCE
  ? new URL("./runner-entry.mjs", import.meta.url)
  : new URL("./runner-thread.js", import.meta.url);
const SOURCE_CONDITION = "--conditions=@citadel/source";
const RUNNER_EXEC_ARGV =
  FROM_SOURCE && !process.execArgv.includes(SOURCE_CONDITION) ? [...process.execArgv, SOURCE_CONDITION] : undefined;

/**
 * A run refused before it began: an earlier run left the runner dead (it overran the
 * model's timeout, or the runner was shut down) while this one waited its turn. Nothing
 * of it ran, so the batch may run again on a fresh runner; it says nothing of its inputs.
 */
export class RunnerGoneError extends CitadelError {
  constructor(cause: Error) {
    super("RUNTIME_ERROR", `the runner stopped before this run began (${cause.message})`, undefined, { cause });
  }
}

function fromWire(w: WireTensor): Tensor {
  return { dtype: w.dtype, shape: w.shape, data: viewAs(w.dtype, new Uint8Array(w.buffer)) };
}

/** A run sent to the thread and not answered yet. */
interface PendingRun {
  resolve: (r: RunResult) => void;
  reject: (e: Error) => void;
  /** Set when the thread says the run began: its timeout is counting. */
  began: () => void;
  started: boolean;
}

/**
 * One model session in its own worker thread. Runs are serialised (one at a time,
 * like a GPU stream), queued in the thread so that one begins as soon as the one
 * before it ends. A run past its timeout (counted from when it begins), or aborted
 * once begun, rejects at once and the thread is abandoned: native code cannot be
 * interrupted, so the caller replaces the runner. A run aborted before it begins is
 * dropped from the thread's queue and the runner lives on. `abandoned` counts
 * threads that were cut loose and have not exited.
 */
export class ModelRunner {
  static abandonedAlive = 0;

  private readonly worker: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, PendingRun>();
  /** Runs aborted before they began, told to the thread: one it began anyway costs the runner. */
  private readonly skipping = new Set<number>();
  private onLoaded?: { resolve: (i: LoadedInfo) => void; reject: (e: Error) => void };
  private dead: Error | null = null;
  /** Which run's part is running and since when, as the thread notes it (protocol.ts, PROGRESS_BYTES). */
  private readonly progress = new BigInt64Array(new SharedArrayBuffer(PROGRESS_BYTES));

  private constructor() {
    this.worker = new Worker(RUNNER_ENTRY, {
      workerData: { progress: this.progress.buffer },
      // The thread needs no env or argv of ours (secrets stay in the parent).
      env: {},
      argv: [],
      ...(RUNNER_EXEC_ARGV ? { execArgv: RUNNER_EXEC_ARGV } : {}),
      stdout: false,
      stderr: false,
    });
    this.worker.on("message", (m: FromRunner) => this.onMessage(m));
    this.worker.on("error", (err) => this.fail(new CitadelError("RUNTIME_ERROR", `runner crashed: ${err.message}`)));
    this.worker.on("exit", (code) => this.fail(new CitadelError("RUNTIME_ERROR", `runner exited with code ${code}`)));
  }

  /**
   * Starts a runner and loads `model` into it. The bytes are transferred to the
   * thread (this side's view is detached) and wiped there once the session exists.
   */
  static async start(model: Uint8Array, opts: RunnerOptions): Promise<{ runner: ModelRunner; info: LoadedInfo }> {
    const runner = new ModelRunner();
    const providers = opts.requireGpu ? opts.providers.filter((p) => p !== "cpu") : opts.providers;
    if (providers.length === 0) {
      await runner.close();
      throw new CitadelError("PROVIDER_UNAVAILABLE", "requireGpu is set but the manifest lists no GPU provider");
    }
    const buffer =
      model.byteOffset === 0 && model.byteLength === model.buffer.byteLength && model.buffer instanceof ArrayBuffer
        ? model.buffer
        : (model.buffer.slice(model.byteOffset, model.byteOffset + model.byteLength) as ArrayBuffer);
    if (buffer !== model.buffer) model.fill(0);
    const loaded = new Promise<LoadedInfo>((resolve, reject) => {
      runner.onLoaded = { resolve, reject };
    });
    runner.post({ type: "load", model: buffer, providers, deviceId: opts.deviceId ?? 0, threads: opts.threads ?? 0 }, [
      buffer,
    ]);
    try {
      return { runner, info: await loaded };
    } catch (err) {
      await runner.close();
      throw err;
    }
  }

  get alive(): boolean {
    return this.dead === null;
  }

  /**
   * Runs one batch once the runs queued before it are done. Rejects with TIMEOUT after
   * `timeoutMs` from when it begins, or CANCELLED when `signal` aborts; begun, either
   * way this runner is dead afterwards, and runs still queued behind it reject with
   * RunnerGoneError. `onStart` fires when this run (not the queue wait) begins. With
   * `parts`, the batch runs as several runs back to back in the thread (one message,
   * one answer), each held to `timeoutMs` from its own start.
   */
  run(
    feeds: Record<string, Tensor>,
    outputs: string[],
    timeoutMs: number,
    signal?: AbortSignal,
    onStart?: () => void,
    parts?: RunParts,
  ): Promise<RunResult> {
    if (this.dead) return Promise.reject(new RunnerGoneError(this.dead));
    if (signal?.aborted) return Promise.reject(new CitadelError("CANCELLED", "cancelled before the run started"));
    const id = this.nextId++;
    const wire: Record<string, WireTensor> = {};
    const transfer: ArrayBuffer[] = [];
    for (const [name, t] of Object.entries(feeds)) {
      const w = toWire(t);
      wire[name] = w.wire;
      transfer.push(w.transfer);
    }
    return new Promise<RunResult>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.pending.delete(id);
      };
      const onAbort = () => {
        const begun = this.pending.get(id)?.started === true;
        cleanup();
        if (begun) {
          reject(new CitadelError("CANCELLED", "the job was cancelled during inference"));
          this.abandon("cancelled");
          return;
        }
        reject(new CitadelError("CANCELLED", "cancelled before the run started"));
        this.skipping.add(id);
        this.post({ type: "skip", id }, []);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      const entry: PendingRun = {
        started: false,
        began: () => {
          entry.started = true;
          const expire = () => {
            // A later part of this run began since the timer was set: it has its own
            // timeoutMs. The thread past this run: it ended, and its answer is on its way
            // (a timer can fire before a message that came first is read).
            const at = this.partStartedAt(id);
            const left = at === undefined ? timeoutMs : at + timeoutMs - performance.now();
            if (left >= 1) {
              timer = setTimeout(expire, left);
              return;
            }
            cleanup();
            reject(new CitadelError("TIMEOUT", `inference exceeded ${timeoutMs} ms`));
            this.abandon("timeout");
          };
          timer = setTimeout(expire, timeoutMs);
          onStart?.();
        },
        resolve: (r) => {
          cleanup();
          resolve(r);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      };
      this.pending.set(id, entry);
      this.post(
        { type: "run", id, feeds: wire, outputs, ...(parts && parts.sizes.length > 1 ? { parts } : {}) },
        transfer,
      );
    });
  }

  /**
   * When the part of run `id` now running began, on this thread's performance.now()
   * clock; undefined when the thread has noted a later run (it notes each run before
   * it begins, so this one is over).
   */
  private partStartedAt(id: number): number | undefined {
    if (Atomics.load(this.progress, 0) !== BigInt(id)) return undefined;
    return Number(Atomics.load(this.progress, 1)) / 1000 - performance.timeOrigin;
  }

  private post(msg: ToRunner, transfer: ArrayBuffer[]): void {
    this.worker.postMessage(msg, transfer);
  }

  private onMessage(m: FromRunner): void {
    switch (m.type) {
      case "loaded":
        this.onLoaded?.resolve({ provider: m.provider, inputs: m.inputs, outputs: m.outputs, attempts: m.attempts });
        return;
      case "load-failed":
        this.onLoaded?.reject(
          new CitadelError(
            "PROVIDER_UNAVAILABLE",
            `${m.message}: ${m.attempts.map((a) => `${a.provider}: ${a.error}`).join("; ")}`,
            {
              attempts: m.attempts,
            },
          ),
        );
        return;
      case "started": {
        // Aborted while queued, but the thread began it before it read the skip: it runs
        // for no one and nothing bounds it, so the runner goes, as for a run aborted once begun.
        if (this.skipping.delete(m.id)) this.abandon("cancelled");
        else this.pending.get(m.id)?.began();
        return;
      }
      case "skipped":
        this.skipping.delete(m.id);
        return;
      case "result": {
        const pending = this.pending.get(m.id);
        // A type we cannot hold (the thread refuses these; this is the second line) fails
        // the run instead of throwing inside the message handler, which would crash the worker.
        const odd = Object.entries(m.outputs).find(([, w]) => !DType.safeParse(w.dtype).success);
        if (odd) {
          pending?.reject(
            new CitadelError("RUNTIME_ERROR", `inference failed: output '${odd[0]}' has an unserved dtype`),
          );
          return;
        }
        const outputs: Record<string, Tensor> = {};
        for (const [name, w] of Object.entries(m.outputs)) outputs[name] = fromWire(w);
        pending?.resolve({ outputs, ms: m.ms, ...(m.runs.length > 1 ? { runs: m.runs } : {}) });
        return;
      }
      case "run-failed":
        this.pending.get(m.id)?.reject(new CitadelError("RUNTIME_ERROR", `inference failed: ${m.message}`));
        return;
    }
  }

  /** Dead: the run in progress rejects with `err`; those queued behind it never began. */
  private fail(err: Error): void {
    if (this.dead) return;
    this.dead = err;
    this.onLoaded?.reject(err);
    for (const p of [...this.pending.values()]) p.reject(p.started ? err : new RunnerGoneError(err));
    this.pending.clear();
    this.skipping.clear();
  }

  /**
   * Cuts the thread loose. It is NOT terminated: terminating a thread while
   * onnxruntime is inside a native run aborts the whole process when the run returns
   * into the dying environment. The thread is told to exit once its run returns, and
   * counts as hung until then (a worker with too many reports unhealthy).
   */
  private abandon(reason: string): void {
    this.fail(new CitadelError("RUNTIME_ERROR", `runner abandoned (${reason})`));
    ModelRunner.abandonedAlive++;
    this.worker.once("exit", () => {
      ModelRunner.abandonedAlive--;
    });
    this.worker.unref();
    this.worker.postMessage({ type: "exit" } satisfies ToRunner);
  }

  /** Releases the session and ends the thread once any run in progress returns. */
  async close(): Promise<void> {
    if (this.worker.threadId < 0) return;
    const exited = new Promise<void>((resolve) => this.worker.once("exit", () => resolve()));
    this.fail(new CitadelError("RUNTIME_ERROR", "runner closed"));
    this.worker.postMessage({ type: "exit" } satisfies ToRunner);
    await exited;
  }
}
