import type { TensorSpec } from "@citadel/contracts";
import type { Tensor } from "@citadel/tensors";
import { describe, expect, it } from "vitest";
import { probeFeeds, probeShapes } from "./probe.js";

const spec = (s: Partial<TensorSpec> & Pick<TensorSpec, "name" | "dtype" | "shape">): TensorSpec =>
  ({ batchAxis: 0, ...s }) as TensorSpec;

describe("the model's health probe", () => {
  it("is shaped after one sample of a job: batch axes 1, unbatched inputs whole", () => {
    const manifest = {
      inputs: [
        spec({ name: "x", dtype: "float32", shape: [null, 3, null] }),
        spec({ name: "cols", dtype: "float32", shape: [null, 5], batchAxis: 1 }),
        spec({ name: "table", dtype: "int64", shape: [4], batchAxis: null }),
      ],
    };
    const t = (dtype: Tensor["dtype"], shape: number[]): Tensor => ({ dtype, shape, data: new Float32Array(0) });
    expect(
      probeShapes(manifest, { x: t("float32", [6, 3, 17]), cols: t("float32", [2, 6]), table: t("int64", [4]) }),
    ).toEqual({
      x: [1, 3, 17],
      cols: [2, 1],
      table: [4],
    });
  });

  it("feeds the value nearest 0 each input's range allows, in its dtype; none where that cannot be written", () => {
    const feeds = probeFeeds(
      {
        inputs: [
          spec({ name: "a", dtype: "float32", shape: [null, 2], range: [-1, 1] }),
          spec({ name: "b", dtype: "int64", shape: [null, 1], range: [2.5, 9] }),
          spec({ name: "c", dtype: "int32", shape: [null, 1], range: [-9, -1.5] }),
          spec({ name: "d", dtype: "bool", shape: [null, 3] }),
        ],
      },
      { a: [1, 2], b: [1, 1], c: [1, 1], d: [1, 3] },
    );
    expect(feeds?.a).toEqual({ dtype: "float32", shape: [1, 2], data: Float32Array.of(0, 0) });
    expect(feeds?.b?.data).toEqual(BigInt64Array.of(3n));
    expect(feeds?.c?.data).toEqual(Int32Array.of(-2));
    expect(feeds?.d?.data).toEqual(Uint8Array.of(0, 0, 0));
    const half = spec({ name: "h", dtype: "float16", shape: [null, 1], range: [1, 2] });
    expect(probeFeeds({ inputs: [half] }, { h: [1, 1] })).toBeNull();
    expect(probeFeeds({ inputs: [spec({ name: "a", dtype: "float32", shape: [null, 2] })] }, {})).toBeNull();
  });
});
