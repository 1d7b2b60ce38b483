// Tiny elementwise models with exactly known outputs, one per I/O shape the runtime has to handle.

import type { Dtype } from "./proto.js";
import { DATA_TYPE, encodeModel, floatTensor, int64Tensor, intAttr, makeModel, node } from "./proto.js";

/** `a` float32 [N,4] + `b` int64 [N,1] → `y` float32 [N,4] = a + Cast(b) (b broadcast along the row). */
export function buildMultiInputModel(): Uint8Array {
  return encodeModel(
    makeModel({
      graphName: "citadel_multi_input",
      nodes: [
        node("Cast", ["b"], ["b_float"], [intAttr("to", DATA_TYPE.float32)]),
        node("Add", ["a", "b_float"], ["y"]),
      ],
      inputs: [
        { name: "a", dtype: "float32", shape: ["N", 4] },
        { name: "b", dtype: "int64", shape: ["N", 1] },
      ],
      outputs: [{ name: "y", dtype: "float32", shape: ["N", 4] }],
    }),
  );
}

/** `x` float32 [N,3] (batched) and `scale` float32 scalar (rank 0, not batched) → `y` float32 [N,3] = x * scale. */
export function buildScalarInputModel(): Uint8Array {
  return encodeModel(
    makeModel({
      graphName: "citadel_scalar_input",
      nodes: [node("Mul", ["x", "scale"], ["y"])],
      inputs: [
        { name: "x", dtype: "float32", shape: ["N", 3] },
        { name: "scale", dtype: "float32", shape: [] },
      ],
      outputs: [{ name: "y", dtype: "float32", shape: ["N", 3] }],
    }),
  );
}

/** Batch axis last: `x` float32 [4,N] → `y` float32 [4,N] = x * 2 + 1. */
export function buildBatchAxisLastModel(): Uint8Array {
  return encodeModel(
    makeModel({
      graphName: "citadel_batch_axis_last",
      nodes: [node("Mul", ["x", "two"], ["doubled"]), node("Add", ["doubled", "one"], ["y"])],
      inputs: [{ name: "x", dtype: "float32", shape: [4, "N"] }],
      outputs: [{ name: "y", dtype: "float32", shape: [4, "N"] }],
      initializers: [floatTensor("two", [], [2]), floatTensor("one", [], [1])],
    }),
  );
}

/** No batch axis at all: fixed-shape `x` float32 [2,3] → `y` float32 [2,3] = Relu(x). */
export function buildNoBatchModel(): Uint8Array {
  return encodeModel(
    makeModel({
      graphName: "citadel_no_batch",
      nodes: [node("Relu", ["x"], ["y"])],
      inputs: [{ name: "x", dtype: "float32", shape: [2, 3] }],
      outputs: [{ name: "y", dtype: "float32", shape: [2, 3] }],
    }),
  );
}

/**
 * `x` → `y` = Identity(x), same dtype and shape (default ["N", 4]), for dtype round-trip tests. onnxruntime's CPU
 * Identity accepts every {@link Dtype} listed there, including float16, bfloat16, bool and string.
 */
export function buildIdentityModel(dtype: Dtype, shape: (number | string)[] = ["N", 4]): Uint8Array {
  return encodeModel(
    makeModel({
      graphName: `citadel_identity_${dtype}`,
      nodes: [node("Identity", ["x"], ["y"])],
      inputs: [{ name: "x", dtype, shape }],
      outputs: [{ name: "y", dtype, shape }],
    }),
  );
}

/**
 * Loads fine and fails every run: `x` float32 [N,2] is reshaped to [5], which no N fits.
 * For retry and circuit-breaker tests (a runtime error, not a load or validation one).
 */
export function buildFailingModel(): Uint8Array {
  return encodeModel(
    makeModel({
      graphName: "citadel_always_fails",
      nodes: [node("Reshape", ["x", "five"], ["y"])],
      inputs: [{ name: "x", dtype: "float32", shape: ["N", 2] }],
      outputs: [{ name: "y", dtype: "float32", shape: ["N", 5] }],
      initializers: [int64Tensor("five", [1], [5])],
    }),
  );
}

/**
 * A table lookup that fails only for some inputs: `idx` int64 [N,1] → `y` float32 [N,1] = table[idx] with a table of
 * `size` entries (table[i] = i / 2). An index ≥ `size` makes onnxruntime's Gather fail the whole run: a "poison input"
 * for tests of batch splitting (a manifest that allows indices past the table stands for a model with inputs it
 * cannot handle).
 */
export function buildLookupModel(size = 10): Uint8Array {
  return encodeModel(
    makeModel({
      graphName: "citadel_lookup",
      nodes: [
        node("Gather", ["table", "idx"], ["gathered"], [intAttr("axis", 0)]),
        node("Squeeze", ["gathered", "last"], ["y"]),
      ],
      inputs: [{ name: "idx", dtype: "int64", shape: ["N", 1] }],
      outputs: [{ name: "y", dtype: "float32", shape: ["N", 1] }],
      initializers: [
        floatTensor(
          "table",
          [size, 1],
          Array.from({ length: size }, (_, i) => i / 2),
        ),
        int64Tensor("last", [1], [2]),
      ],
    }),
  );
}

/** `x` float32 [N,4] → `y` = Cast(x) to `to` (e.g. float16 or uint32, dtypes Citadel does not serve). */
export function buildCastModel(to: Dtype): Uint8Array {
  return encodeModel(
    makeModel({
      graphName: `citadel_cast_${to}`,
      nodes: [node("Cast", ["x"], ["y"], [intAttr("to", DATA_TYPE[to])])],
      inputs: [{ name: "x", dtype: "float32", shape: ["N", 4] }],
      outputs: [{ name: "y", dtype: to, shape: ["N", 4] }],
    }),
  );
}
