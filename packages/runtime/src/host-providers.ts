import * as ort from "onnxruntime-node";
import type { ProviderName } from "./protocol.js";

const PREFERENCE: readonly ProviderName[] = ["tensorrt", "cuda", "cpu"];

/**
 * The execution providers this host can create a session of `model` with, in the
 * workers' preference order (TensorRT, CUDA, CPU): each is tried alone, as the runner
 * tries it. Tests use it to expect what is true where they run (a CPU-only machine or
 * a GPU node); test/gpu/smoke.ts prints it.
 */
export async function loadableProviders(model: Uint8Array, deviceId = 0): Promise<ProviderName[]> {
  const out: ProviderName[] = [];
  for (const provider of PREFERENCE) {
    const ep = provider === "cpu" ? "cpu" : { name: provider, deviceId };
    // A refusal is the answer for this provider (no library, no device), not a failure.
    const session = await ort.InferenceSession.create(model, { executionProviders: [ep], logSeverityLevel: 4 }).catch(
      () => null,
    );
    if (session) {
      out.push(provider);
      await session.release();
    }
  }
  return out;
}
