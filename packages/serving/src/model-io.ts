import { CitadelError, type ManifestBody, type TensorSpec } from "@citadel/contracts";
import type { IoMeta } from "@citadel/runtime";

/**
 * Compares a loaded session's own inputs and outputs with the signed manifest. The
 * manifest is what the API validates against and what the worker allocates for; a
 * model whose tensors differ (another dtype such as float16, another rank, a fixed
 * dimension of another size, a missing or extra name) is refused at load with
 * MODEL_IO_MISMATCH instead of failing, or crashing, at run time.
 */
export function checkModelIo(
  manifest: Pick<ManifestBody, "inputs" | "outputs">,
  session: { inputs: IoMeta[]; outputs: IoMeta[] },
): void {
  const problems = [
    ...compare("input", manifest.inputs, session.inputs),
    ...compare("output", manifest.outputs, session.outputs),
  ];
  if (problems.length > 0) {
    throw new CitadelError("MODEL_IO_MISMATCH", `the model does not match its manifest: ${problems.join("; ")}`, {
      problems,
    });
  }
}

function compare(kind: string, specs: readonly TensorSpec[], metas: readonly IoMeta[]): string[] {
  const problems: string[] = [];
  const byName = new Map(metas.map((m) => [m.name, m]));
  for (const spec of specs) {
    const meta = byName.get(spec.name);
    if (!meta) {
      problems.push(`${kind} '${spec.name}' is not in the model`);
      continue;
    }
    byName.delete(spec.name);
    // A bfloat16 input is fed widened to the float32 the manifest names as its modelDtype.
    const want = spec.modelDtype ?? spec.dtype;
    if (meta.type !== want) problems.push(`${kind} '${spec.name}' is ${meta.type}, the manifest says ${want}`);
    if (meta.shape.length !== spec.shape.length) {
      problems.push(`${kind} '${spec.name}' has rank ${meta.shape.length}, the manifest says ${spec.shape.length}`);
      continue;
    }
    spec.shape.forEach((want, axis) => {
      const got = meta.shape[axis];
      const fixed = typeof got === "number" && got > 0 ? got : null;
      if (want !== null && fixed !== null && want !== fixed)
        problems.push(`${kind} '${spec.name}' dimension ${axis} is ${fixed}, the manifest says ${want}`);
    });
  }
  for (const name of byName.keys()) problems.push(`${kind} '${name}' is not in the manifest`);
  return problems;
}
