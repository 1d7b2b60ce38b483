// Small, deterministic image classifiers: x[N,C,H,W] → (Conv3x3 → Relu) × layers → GlobalAveragePool → Flatten
// → Gemm → Softmax → probs[N,classes]. The batch axis is symbolic ("N"), so any batch size runs.
import { mulberry32, uniformFloat32 } from "./prng.js";
import type { IoSpec, NodeProtoInit, TensorProtoInit } from "./proto.js";
import { encodeModel, floatAttr, floatTensor, intAttr, intsAttr, makeModel, node } from "./proto.js";

export interface ConvNetOptions {
  /** Input channels C (default 3). */
  channels?: number;
  /** Input height H (default 32). */
  height?: number;
  /** Input width W (default 32). */
  width?: number;
  /** Output channels of every conv layer (default 8). */
  filters?: number;
  /** Number of classes, the width of `probs` (default 10). */
  classes?: number;
  /** Number of stacked Conv3x3+Relu blocks (default 1). */
  layers?: number;
  /** PRNG seed for the weights (default 42). */
  seed?: number;
}

export type ResolvedConvNetOptions = Required<ConvNetOptions>;

export interface ConvLayerParameters {
  inChannels: number;
  outChannels: number;
  /** [outChannels, inChannels, 3, 3] */
  weight: Float32Array;
  /** [outChannels] */
  bias: Float32Array;
}

export interface ConvNetParameters {
  options: ResolvedConvNetOptions;
  convs: ConvLayerParameters[];
  /** Gemm B, stored [classes, filters] and used with transB=1. */
  fcWeight: Float32Array;
  /** [classes] */
  fcBias: Float32Array;
}

const CONV_DEFAULTS: ResolvedConvNetOptions = {
  channels: 3,
  height: 32,
  width: 32,
  filters: 8,
  classes: 10,
  layers: 1,
  seed: 42,
};

/**
 * Compute-bound benchmark defaults: 3 × (Conv3x3 → Relu) with 64 filters on 3×64×64 inputs, ≈ 0.62 GFLOP/sample
 * (2 × 64·64·9·64·64·2 for the two 64→64 convs, plus 14 MFLOP for the first).
 *
 * Measured on this project's machine (2 vCPUs, onnxruntime-node 1.30, CPU EP, warm session, median of 5 runs):
 *   intraOpNumThreads=1: ≈ 7–8 ms/sample at batch 8, ≈ 9 ms/sample at batch 1;
 *   default threads (2): ≈ 6 ms/sample at batch 1 and 8.
 * For comparison the 32-filter variant ran ≈ 2 ms/sample single-threaded.
 */
export const HEAVY_CONVNET_DEFAULTS: ResolvedConvNetOptions = {
  channels: 3,
  height: 64,
  width: 64,
  filters: 64,
  classes: 10,
  layers: 3,
  seed: 7,
};

export const INPUT_NAME = "x";
export const OUTPUT_NAME = "probs";

function resolve(opts: ConvNetOptions | undefined, defaults: ResolvedConvNetOptions): ResolvedConvNetOptions {
  const o: ResolvedConvNetOptions = {
    channels: opts?.channels ?? defaults.channels,
    height: opts?.height ?? defaults.height,
    width: opts?.width ?? defaults.width,
    filters: opts?.filters ?? defaults.filters,
    classes: opts?.classes ?? defaults.classes,
    layers: opts?.layers ?? defaults.layers,
    seed: opts?.seed ?? defaults.seed,
  };
  for (const key of ["channels", "height", "width", "filters", "classes", "layers"] as const) {
    const v = o[key];
    if (!Number.isInteger(v) || v < 1)
      throw new RangeError(`convnet option ${key} must be a positive integer, got ${v}`);
  }
  if (!Number.isInteger(o.seed)) throw new RangeError(`convnet option seed must be an integer, got ${o.seed}`);
  return o;
}

/** The deterministic weights `buildConvNet(opts)` embeds; use with {@link referenceConvNet}. */
export function convNetParameters(
  opts?: ConvNetOptions,
  defaults: ResolvedConvNetOptions = CONV_DEFAULTS,
): ConvNetParameters {
  const options = resolve(opts, defaults);
  const next = mulberry32(options.seed);
  const convs: ConvLayerParameters[] = [];
  let inChannels = options.channels;
  for (let l = 0; l < options.layers; l++) {
    const fanIn = inChannels * 9;
    // He-uniform keeps activations O(1) through the ReLU stack.
    const weight = uniformFloat32(next, options.filters * fanIn, Math.sqrt(6 / fanIn));
    const bias = uniformFloat32(next, options.filters, 0.1);
    convs.push({ inChannels, outChannels: options.filters, weight, bias });
    inChannels = options.filters;
  }
  // A larger gain on the classifier so the softmax is visibly non-uniform.
  const fcWeight = uniformFloat32(next, options.classes * options.filters, 4 * Math.sqrt(3 / options.filters));
  const fcBias = uniformFloat32(next, options.classes, 0.5);
  return { options, convs, fcWeight, fcBias };
}

export function convNetIo(options: ResolvedConvNetOptions): { inputs: IoSpec[]; outputs: IoSpec[] } {
  return {
    inputs: [{ name: INPUT_NAME, dtype: "float32", shape: ["N", options.channels, options.height, options.width] }],
    outputs: [{ name: OUTPUT_NAME, dtype: "float32", shape: ["N", options.classes] }],
  };
}

function buildFromParameters(params: ConvNetParameters, graphName: string): Uint8Array {
  const { options } = params;
  const nodes: NodeProtoInit[] = [];
  const initializers: TensorProtoInit[] = [];
  let current = INPUT_NAME;
  params.convs.forEach((conv, l) => {
    const w = `conv${l}.weight`;
    const b = `conv${l}.bias`;
    initializers.push(floatTensor(w, [conv.outChannels, conv.inChannels, 3, 3], conv.weight));
    initializers.push(floatTensor(b, [conv.outChannels], conv.bias));
    nodes.push(
      node(
        "Conv",
        [current, w, b],
        [`conv${l}`],
        [intsAttr("kernel_shape", [3, 3]), intsAttr("pads", [1, 1, 1, 1]), intsAttr("strides", [1, 1])],
      ),
    );
    nodes.push(node("Relu", [`conv${l}`], [`relu${l}`]));
    current = `relu${l}`;
  });
  initializers.push(floatTensor("fc.weight", [options.classes, options.filters], params.fcWeight));
  initializers.push(floatTensor("fc.bias", [options.classes], params.fcBias));
  nodes.push(node("GlobalAveragePool", [current], ["pooled"]));
  nodes.push(node("Flatten", ["pooled"], ["features"], [intAttr("axis", 1)]));
  nodes.push(
    node(
      "Gemm",
      ["features", "fc.weight", "fc.bias"],
      ["logits"],
      [floatAttr("alpha", 1), floatAttr("beta", 1), intAttr("transB", 1)],
    ),
  );
  nodes.push(node("Softmax", ["logits"], [OUTPUT_NAME], [intAttr("axis", -1)]));
  const { inputs, outputs } = convNetIo(options);
  return encodeModel(
    makeModel({
      graphName,
      nodes,
      inputs,
      outputs,
      initializers,
      docString: `citadel ${graphName}: ${JSON.stringify(options)}`,
    }),
  );
}

/**
 * A small conv net with a dynamic batch axis: input `x` float32 [N,C,H,W], output `probs` float32 [N,classes]
 * (rows sum to 1). Opset 17. Same options → byte-identical model.
 */
export function buildConvNet(opts?: ConvNetOptions): Uint8Array {
  return buildFromParameters(convNetParameters(opts), "citadel_convnet");
}

/** The deterministic weights `buildHeavyConvNet(opts)` embeds. */
export function heavyConvNetParameters(opts?: ConvNetOptions): ConvNetParameters {
  return convNetParameters(opts, HEAVY_CONVNET_DEFAULTS);
}

/**
 * A compute-bound variant of {@link buildConvNet} for benchmarks (defaults: {@link HEAVY_CONVNET_DEFAULTS}); same I/O
 * names, `x` [N,3,64,64] → `probs` [N,10].
 */
export function buildHeavyConvNet(opts?: ConvNetOptions): Uint8Array {
  return buildFromParameters(heavyConvNetParameters(opts), "citadel_heavy_convnet");
}

/**
 * Plain-JS forward pass of the conv net (float64 accumulation), for checking onnxruntime's output.
 * `x` is NCHW, length batch*C*H*W. Returns probs, length batch*classes.
 */
export function referenceConvNet(params: ConvNetParameters, x: ArrayLike<number>, batch: number): Float64Array {
  const { channels, height: H, width: W, classes, filters } = params.options;
  if (x.length !== batch * channels * H * W) {
    throw new RangeError(`referenceConvNet: expected ${batch * channels * H * W} values, got ${x.length}`);
  }
  const probs = new Float64Array(batch * classes);
  const plane = H * W;
  for (let n = 0; n < batch; n++) {
    let act = Float64Array.from({ length: channels * plane }, (_, i) => x[n * channels * plane + i] ?? 0);
    for (const conv of params.convs) {
      const out = new Float64Array(conv.outChannels * plane);
      for (let o = 0; o < conv.outChannels; o++) {
        const bias = conv.bias[o] ?? 0;
        for (let i = 0; i < H; i++) {
          for (let j = 0; j < W; j++) {
            let acc = bias;
            for (let c = 0; c < conv.inChannels; c++) {
              for (let ki = 0; ki < 3; ki++) {
                const ii = i + ki - 1;
                if (ii < 0 || ii >= H) continue;
                for (let kj = 0; kj < 3; kj++) {
                  const jj = j + kj - 1;
                  if (jj < 0 || jj >= W) continue;
                  const w = conv.weight[((o * conv.inChannels + c) * 3 + ki) * 3 + kj] ?? 0;
                  acc += w * (act[c * plane + ii * W + jj] ?? 0);
                }
              }
            }
            out[o * plane + i * W + j] = Math.max(0, acc);
          }
        }
      }
      act = out;
    }
    const features = new Float64Array(filters);
    for (let f = 0; f < filters; f++) {
      let sum = 0;
      for (let p = 0; p < plane; p++) sum += act[f * plane + p] ?? 0;
      features[f] = sum / plane;
    }
    const logits = new Float64Array(classes);
    for (let k = 0; k < classes; k++) {
      let acc = params.fcBias[k] ?? 0;
      for (let f = 0; f < filters; f++) acc += (params.fcWeight[k * filters + f] ?? 0) * (features[f] ?? 0);
      logits[k] = acc;
    }
    const max = Math.max(...logits);
    let denom = 0;
    for (let k = 0; k < classes; k++) denom += Math.exp((logits[k] ?? 0) - max);
    for (let k = 0; k < classes; k++) probs[n * classes + k] = Math.exp((logits[k] ?? 0) - max) / denom;
  }
  return probs;
}
