import type { KeyProvider } from "@citadel/keys";
import type { Logger } from "@citadel/telemetry";
import type { WorkerMetrics } from "./metrics.js";

/**
 * Where a model load's time goes, in ms. The phases follow one another, so they add up
 * to the load (`loadMs`) less a few bookkeeping microseconds:
 *   fetch    routing, retirement and manifest reads, signature check, artifact read;
 *   key      the data key's unwrap (Vault Transit decrypt, or the local keyring);
 *   decrypt  AES-GCM over the artifact and its SHA-256 checks;
 *   session  runner thread start, onnxruntime's load in it, InferenceSession.create,
 *            and the model's I/O check.
 * `firstRun` is the first session.run of the session (a batch's compute time), set by
 * the consumer once that run ends: lazy allocations and kernel selection land there.
 */
export interface LoadPhases {
  fetch: number;
  key: number;
  decrypt: number;
  session: number;
  loadMs: number;
  firstRun?: number;
}

/** Label values of `citadel_model_load_phase_seconds{phase}`. */
export type LoadPhaseName = "fetch" | "key" | "decrypt" | "session" | "first_run";

/** `keys` with its unwraps timed into `onUnwrap` (ms): openArtifact unwraps and decrypts in one call. */
export function timedUnwrap(keys: KeyProvider, onUnwrap: (ms: number) => void): KeyProvider {
  return {
    kind: keys.kind,
    generateDataKey: (name) => keys.generateDataKey(name),
    unwrapDataKey: async (name, wrapped) => {
      const t = performance.now();
      try {
        return await keys.unwrapDataKey(name, wrapped);
      } finally {
        onUnwrap(performance.now() - t);
      }
    },
    rewrapDataKey: (name, wrapped) => keys.rewrapDataKey(name, wrapped),
    rotateKey: (name) => keys.rotateKey(name),
    close: () => keys.close(),
  };
}

/** Records a finished load's phases in the histogram. */
export function observeLoadPhases(metrics: WorkerMetrics, model: string, version: string, p: LoadPhases): void {
  const phases: [LoadPhaseName, number][] = [
    ["fetch", p.fetch],
    ["key", p.key],
    ["decrypt", p.decrypt],
    ["session", p.session],
  ];
  for (const [phase, ms] of phases) metrics.loadPhase.observe({ model, version, phase }, ms / 1000);
}

/** Once per loaded session: its first successful run is the last phase of a cold start. */
export function noteFirstRun(
  phases: LoadPhases | undefined,
  ms: number,
  o: { metrics: WorkerMetrics; log: Logger; model: string; version: string },
): void {
  if (!phases || phases.firstRun !== undefined) return;
  phases.firstRun = ms;
  o.metrics.loadPhase.observe({ model: o.model, version: o.version, phase: "first_run" }, ms / 1000);
  o.log.info({ model: o.model, version: o.version, firstRunMs: round2(ms) }, "model first run");
}

export const round2 = (ms: number): number => Math.round(ms * 100) / 100;

/** Phases rounded for a log line or an audit record. */
export function phaseMsOf(p: LoadPhases): Record<string, number> {
  return { fetch: round2(p.fetch), key: round2(p.key), decrypt: round2(p.decrypt), session: round2(p.session) };
}
