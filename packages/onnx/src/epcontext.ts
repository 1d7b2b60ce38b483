// Wrap a serialized TensorRT engine as an ONNX "EPContext" model (docs/contract.md#runtime-boundaries): the Node binding of onnxruntime cannot
// pass trt_* options, but it can load such a model from a buffer with executionProviders: ["tensorrt"].
//
// Attribute names and types follow onnxruntime's own definitions (microsoft/onnxruntime):
// - onnxruntime/core/providers/tensorrt/onnx_ctx_model_helper.h: EPCONTEXT_OP = "EPContext",
//   EPCONTEXT_OP_DOMAIN = "com.microsoft", EMBED_MODE = "embed_mode", EP_CACHE_CONTEXT = "ep_cache_context",
//   COMPUTE_CAPABILITY = "hardware_architecture", ONNX_MODEL_FILENAME = "onnx_model_filename".
// - onnx_ctx_model_helper.cc, CreateCtxModel: embed_mode is AttributeProto INT; ep_cache_context, hardware_architecture
//   and onnx_model_filename are STRING. TensorRTCacheModelHandler::GetEpContextFromGraph reads
//   `attrs.at(EMBED_MODE).i()` and, when it is 1, passes `attrs.at(EP_CACHE_CONTEXT).s()` (the raw bytes) straight to
//   IRuntime::deserializeCudaEngine. ValidateEPCtxNode compares hardware_architecture with the GPU's compute
//   capability ("86" for sm_86; "80+" marks an Ampere+ hardware-compatible engine) and warns on a mismatch.
// - docs/execution-providers/EP-Context-Design.md and the contrib op schema (contrib_defs.cc, EPContext, since
//   version 1 of com.microsoft): main_context INT (default 1), embed_mode INT (default 1), ep_cache_context STRING,
//   source STRING ("unique key defined by the EP"), plus optional ep_sdk_version, onnx_model_filename,
//   hardware_architecture, partition_name, notes (STRING) and max_size (INT); inputs/outputs variadic.
// - The TensorRT EP finds the node by op type (GraphHasCtxNode) and expects it to be the only node of the graph.

import type { AttributeProtoInit, IoSpec } from "./proto.js";
import { bytesAttr, encodeModel, intAttr, makeModel, node } from "./proto.js";

export const EPCONTEXT_OP_TYPE = "EPContext";
export const EPCONTEXT_DOMAIN = "com.microsoft";
export const TENSORRT_EP_SOURCE = "TensorrtExecutionProvider";

/** Protobuf messages (and onnxruntime's parser) stop at 2 GiB; leave room for the rest of the model. */
export const MAX_EMBEDDED_ENGINE_BYTES = 2 ** 31 - 1 - 1024 * 1024;

export interface EpContextOptions {
  /** `source` attribute: the EP that must run the node (default "TensorrtExecutionProvider"). */
  source?: string;
  /** `onnx_model_filename`: the ONNX model the engine was built from (used by TensorRT EP to refit stripped engines). */
  onnxModelFilename?: string;
  /** `hardware_architecture`: the GPU compute capability the engine was built for, e.g. "86" or "80+". */
  hardwareArchitecture?: string;
  /** `ep_sdk_version`: e.g. the TensorRT version that built the engine ("10.9.0"). */
  epSdkVersion?: string;
}

function checkIo(io: { inputs: IoSpec[]; outputs: IoSpec[] }): void {
  if (io.inputs.length === 0 || io.outputs.length === 0) {
    throw new RangeError("an EPContext model needs at least one input and one output");
  }
  const seen = new Set<string>();
  for (const spec of [...io.inputs, ...io.outputs]) {
    if (spec.name.length === 0) throw new RangeError("EPContext I/O names must be non-empty");
    if (seen.has(spec.name)) throw new RangeError(`EPContext I/O name ${JSON.stringify(spec.name)} is used twice`);
    seen.add(spec.name);
    for (const d of spec.shape) {
      if (typeof d === "number" ? !Number.isSafeInteger(d) || d < 0 : d.length === 0) {
        throw new RangeError(`EPContext I/O ${spec.name}: bad dim ${JSON.stringify(d)}`);
      }
    }
  }
}

/**
 * An ONNX model holding `engine` (a serialized TensorRT engine) in a single `com.microsoft` `EPContext` node with
 * `main_context=1`, `embed_mode=1`, `ep_cache_context=<engine bytes>`, `source` (default TensorrtExecutionProvider)
 * and the optional attributes given. The graph's inputs/outputs are `io` (they must match the engine's bindings and
 * its optimization profile; this function cannot check that without TensorRT). Opsets: ai.onnx 17, com.microsoft 1.
 */
export function wrapEngineAsEpContext(
  engine: Uint8Array,
  io: { inputs: IoSpec[]; outputs: IoSpec[] },
  opts: EpContextOptions = {},
): Uint8Array {
  if (engine.length === 0) throw new RangeError("engine is empty");
  if (engine.length > MAX_EMBEDDED_ENGINE_BYTES) {
    throw new RangeError(`engine of ${engine.length} bytes is too large to embed (max ${MAX_EMBEDDED_ENGINE_BYTES})`);
  }
  checkIo(io);
  const source = opts.source ?? TENSORRT_EP_SOURCE;
  const attributes: AttributeProtoInit[] = [
    intAttr("main_context", 1),
    intAttr("embed_mode", 1),
    bytesAttr("ep_cache_context", engine),
    bytesAttr("source", source),
  ];
  if (opts.hardwareArchitecture !== undefined) {
    attributes.push(bytesAttr("hardware_architecture", opts.hardwareArchitecture));
  }
  if (opts.onnxModelFilename !== undefined) attributes.push(bytesAttr("onnx_model_filename", opts.onnxModelFilename));
  if (opts.epSdkVersion !== undefined) attributes.push(bytesAttr("ep_sdk_version", opts.epSdkVersion));

  const ctxNode = node(
    EPCONTEXT_OP_TYPE,
    io.inputs.map((s) => s.name),
    io.outputs.map((s) => s.name),
    attributes,
    EPCONTEXT_DOMAIN,
  );
  ctxNode.name = `${source}_citadel_engine_0`;
  return encodeModel(
    makeModel({
      graphName: "citadel_epcontext",
      nodes: [ctxNode],
      inputs: io.inputs,
      outputs: io.outputs,
      opsetImports: [
        { domain: "", version: 17 },
        { domain: EPCONTEXT_DOMAIN, version: 1 },
      ],
      docString: `TensorRT engine (${engine.length} bytes) wrapped as an EPContext model by @citadel/onnx`,
    }),
  );
}
