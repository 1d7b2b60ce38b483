/**
 * Creates an onnxruntime session from plaintext model bytes, trying each provider in
 * order, and wipes the bytes once create() has returned (loaded or not). The runner
 * thread calls this; it lives apart from the thread's message wiring so the wipe can
 * be tested on the bytes themselves.
 */
import * as ort from "onnxruntime-node";
import type { ProviderAttempt, ProviderName } from "./protocol.js";

export interface SessionOptions {
  providers: ProviderName[];
  deviceId: number;
  threads: number;
}

export async function createSessionAndWipe(
  bytes: Uint8Array,
  o: SessionOptions,
): Promise<{ session: ort.InferenceSession | null; attempts: ProviderAttempt[] }> {
  const attempts: ProviderAttempt[] = [];
  try {
    for (const provider of o.providers) {
      try {
        const ep = provider === "cpu" ? "cpu" : { name: provider, deviceId: o.deviceId };
        const session = await ort.InferenceSession.create(bytes, {
          executionProviders: [ep],
          intraOpNumThreads: o.threads,
          interOpNumThreads: 1,
          graphOptimizationLevel: "all",
          logSeverityLevel: 4,
        });
        attempts.push({ provider, ok: true });
        return { session, attempts };
      } catch (err) {
        attempts.push({ provider, ok: false, error: firstLine(err) });
      }
    }
    return { session: null, attempts };
  } finally {
    // The plaintext model lives only as long as create() needs it.
    bytes.fill(0);
  }
}

export function firstLine(err: unknown): string {
  const s = err instanceof Error ? err.message : String(err);
  return (s.split("\n")[0] ?? "").slice(0, 300);
}
