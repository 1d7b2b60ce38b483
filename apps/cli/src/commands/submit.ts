import { readFile } from "node:fs/promises";
import type { CitadelClient } from "@citadel/client";
import { BinaryJobHeader, CitadelError, type Priority } from "@citadel/contracts";
import { binaryDescriptor, type NamedRawTensor, readNpy, viewAs } from "@citadel/tensors";
import { outcomeOf, submitFollowing } from "../api/outcome.js";
import { zodMessage } from "../zod-message.js";
import { finish, printJson } from "./jobs.js";

export interface NpySubmitOptions {
  model: string;
  version?: string;
  /** `name=FILE.npy`, one per input. */
  input: string[];
  output: string[];
  priority?: Priority;
  timeoutMs?: number;
  /** Wait up to this long for the result (long polls after the submit's own wait). */
  wait?: number;
}

/** Reads each `name=FILE.npy` as a tensor named `name` (strict .npy: see @citadel/tensors readNpy). */
export async function readNpyInputs(specs: readonly string[]): Promise<NamedRawTensor[]> {
  if (specs.length === 0) throw new Error("give the model's inputs: --input <name>=<file.npy> (repeatable)");
  const tensors: NamedRawTensor[] = [];
  for (const spec of specs) {
    const eq = spec.indexOf("=");
    if (eq <= 0 || eq === spec.length - 1) throw new Error(`--input '${spec}' is not <name>=<file.npy>`);
    const name = spec.slice(0, eq);
    const file = spec.slice(eq + 1);
    if (tensors.some((t) => t.name === name)) throw new Error(`input '${name}' is given twice`);
    tensors.push({ name, ...readNpy(new Uint8Array(await readFile(file)), file) });
  }
  return tensors;
}

/**
 * `citadel submit --model M --input name=FILE.npy …`: one job as a KServe v2 binary
 * body (the tensors' bytes as the files hold them, no base64). Without --wait it
 * prints the accepted job; with it, the job's final view (or where it stood at the end).
 */
export async function submitNpy(client: CitadelClient, o: NpySubmitOptions): Promise<void> {
  const tensors = await readNpyInputs(o.input);
  // Checked here first, so a bad flag is one line naming its path, before anything is sent.
  const header = BinaryJobHeader.safeParse({
    model: o.model,
    ...(o.version !== undefined ? { version: o.version } : {}),
    ...(o.timeoutMs !== undefined ? { timeoutMs: o.timeoutMs } : {}),
    ...(o.priority !== undefined ? { priority: o.priority } : {}),
    inputs: tensors.map(binaryDescriptor),
    ...(o.output.length > 0 ? { outputs: o.output.map((name) => ({ name })) } : {}),
  });
  if (!header.success) throw new CitadelError("VALIDATION_FAILED", zodMessage(header.error.issues));
  const { inputs: _, outputs, ...rest } = header.data;
  const job = {
    ...rest,
    inputs: Object.fromEntries(
      tensors.map((t) => [t.name, { dtype: t.dtype, shape: t.shape, data: viewAs(t.dtype, t.bytes) }]),
    ),
    ...(outputs ? { outputs: outputs.map((x) => x.name) } : {}),
  };
  const r = await submitFollowing(client, job, o.wait, true);
  if ("accepted" in r) {
    printJson(r.accepted);
    return;
  }
  printJson(r.view);
  finish(outcomeOf(r.view, o.wait));
}
