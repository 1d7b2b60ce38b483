// Read a model's interface (and its EPContext payload, if any) straight from the protobuf, without onnxruntime.
import { createHash } from "node:crypto";
import { EPCONTEXT_OP_TYPE } from "./epcontext.js";
import { OnnxModelError } from "./onnx-model-error.js";
import type { AttributeProtoInit, IoSpec, ModelProtoInit, NodeProtoInit, ValueInfoProtoInit } from "./proto.js";
import { ATTRIBUTE_TYPE, dtypeFromCode, onnx } from "./proto.js";

export interface OpsetImport {
  /** "" is the default ai.onnx domain. */
  domain: string;
  version: number;
}

export interface EpContextInfo {
  /** `source` attribute, "" when absent. */
  source: string;
  /** `embed_mode` (1 = ep_cache_context holds the payload, 0 = a file path); the schema default 1 when absent. */
  embedMode: number;
  /** `main_context`; the schema default 1 when absent. */
  mainContext: number;
  /** Length in bytes of `ep_cache_context`. */
  engineBytes: number;
  /** Hex SHA-256 of `ep_cache_context`. */
  engineSha256: string;
  hardwareArchitecture?: string;
  onnxModelFilename?: string;
  epSdkVersion?: string;
  /** Number of EPContext nodes in the graph (the TensorRT EP expects exactly one). */
  nodeCount: number;
}

export interface ModelInfo {
  irVersion: number;
  producerName: string;
  /** Graph inputs that are not initializers, in declaration order. */
  inputs: IoSpec[];
  outputs: IoSpec[];
  opsetImports: OpsetImport[];
  /** op_type of every top-level node, in graph order (with the domain as a prefix when it is not ai.onnx). */
  opTypes: string[];
  initializerCount: number;
  epContext?: EpContextInfo;
}

/** int64 fields decode as numbers or as Long objects, depending on how protobufjs found `long`. */
type Int64Field = number | { toNumber(): number } | null | undefined;

function toNumber(v: Int64Field): number {
  if (v === null || v === undefined) return 0;
  return typeof v === "number" ? v : v.toNumber();
}

/** Dims with neither a value nor a name (unknown, unnamed) are reported as "?". */
export const UNKNOWN_DIM = "?";

function ioSpec(vi: ValueInfoProtoInit, where: string): IoSpec {
  const name = vi.name ?? "";
  const tensor = vi.type?.tensorType;
  if (!tensor) throw new OnnxModelError(`${where} ${JSON.stringify(name)} is not a tensor (sequence/map/optional)`);
  const code = tensor.elemType ?? 0;
  const dtype = dtypeFromCode(code);
  if (!dtype) throw new OnnxModelError(`${where} ${JSON.stringify(name)} has unsupported element type ${code}`);
  if (!tensor.shape) throw new OnnxModelError(`${where} ${JSON.stringify(name)} has no shape (unknown rank)`);
  const shape = (tensor.shape.dim ?? []).map((d): number | string => {
    if (d.dimParam) return d.dimParam;
    if (d.dimValue !== null && d.dimValue !== undefined) return toNumber(d.dimValue);
    return UNKNOWN_DIM;
  });
  return { name, dtype, shape };
}

function decode(bytes: Uint8Array): ModelProtoInit {
  try {
    return onnx.ModelProto.decode(bytes);
  } catch (err) {
    throw new OnnxModelError("bytes are not an ONNX ModelProto", { cause: err });
  }
}

function attribute(n: NodeProtoInit, name: string): AttributeProtoInit | undefined {
  return (n.attribute ?? []).find((a) => a.name === name);
}

function intAttribute(n: NodeProtoInit, name: string, fallback: number): number {
  const a = attribute(n, name);
  if (!a) return fallback;
  if (a.type !== ATTRIBUTE_TYPE.INT) throw new OnnxModelError(`EPContext attribute ${name} must be INT`);
  return toNumber(a.i);
}

function bytesAttribute(n: NodeProtoInit, name: string): Uint8Array | undefined {
  const a = attribute(n, name);
  if (!a) return undefined;
  if (a.type !== ATTRIBUTE_TYPE.STRING) throw new OnnxModelError(`EPContext attribute ${name} must be STRING`);
  return a.s ?? new Uint8Array(0);
}

function stringAttribute(n: NodeProtoInit, name: string): string | undefined {
  const b = bytesAttribute(n, name);
  return b === undefined ? undefined : new TextDecoder().decode(b);
}

function epContextNodes(model: ModelProtoInit): NodeProtoInit[] {
  return (model.graph?.node ?? []).filter((n) => n.opType === EPCONTEXT_OP_TYPE);
}

/**
 * The interface of an ONNX model: graph inputs minus initializers, outputs (dims as numbers or dim_param strings),
 * opset imports, op types, and the EPContext node's attributes if there is one. Throws {@link OnnxModelError}.
 */
export function inspectModel(bytes: Uint8Array): ModelInfo {
  const model = decode(bytes);
  const graph = model.graph;
  if (!graph) throw new OnnxModelError("model has no graph");
  const initializerNames = new Set((graph.initializer ?? []).map((t) => t.name ?? ""));
  const info: ModelInfo = {
    irVersion: toNumber(model.irVersion),
    producerName: model.producerName ?? "",
    inputs: (graph.input ?? []).filter((vi) => !initializerNames.has(vi.name ?? "")).map((vi) => ioSpec(vi, "input")),
    outputs: (graph.output ?? []).map((vi) => ioSpec(vi, "output")),
    opsetImports: (model.opsetImport ?? []).map((o) => ({ domain: o.domain ?? "", version: toNumber(o.version) })),
    opTypes: (graph.node ?? []).map((n) => (n.domain ? `${n.domain}:${n.opType ?? ""}` : (n.opType ?? ""))),
    initializerCount: initializerNames.size,
  };
  const ctxNodes = epContextNodes(model);
  const ctx = ctxNodes[0];
  if (ctx) {
    const engine = bytesAttribute(ctx, "ep_cache_context") ?? new Uint8Array(0);
    const epContext: EpContextInfo = {
      source: stringAttribute(ctx, "source") ?? "",
      embedMode: intAttribute(ctx, "embed_mode", 1),
      mainContext: intAttribute(ctx, "main_context", 1),
      engineBytes: engine.length,
      engineSha256: createHash("sha256").update(engine).digest("hex"),
      nodeCount: ctxNodes.length,
    };
    const hardwareArchitecture = stringAttribute(ctx, "hardware_architecture");
    if (hardwareArchitecture !== undefined) epContext.hardwareArchitecture = hardwareArchitecture;
    const onnxModelFilename = stringAttribute(ctx, "onnx_model_filename");
    if (onnxModelFilename !== undefined) epContext.onnxModelFilename = onnxModelFilename;
    const epSdkVersion = stringAttribute(ctx, "ep_sdk_version");
    if (epSdkVersion !== undefined) epContext.epSdkVersion = epSdkVersion;
    info.epContext = epContext;
  }
  return info;
}

/**
 * The embedded payload (`ep_cache_context`) of a model's EPContext node: for a wrapped TensorRT engine, the exact
 * engine bytes. Throws {@link OnnxModelError} if there is no EPContext node or it is not in embed mode.
 */
export function extractEpContextEngine(bytes: Uint8Array): Uint8Array {
  const model = decode(bytes);
  const ctx = epContextNodes(model)[0];
  if (!ctx) throw new OnnxModelError("model has no EPContext node");
  if (intAttribute(ctx, "embed_mode", 1) !== 1) {
    throw new OnnxModelError("EPContext node is not in embed mode: ep_cache_context is a file path");
  }
  const engine = bytesAttribute(ctx, "ep_cache_context");
  if (!engine || engine.length === 0) throw new OnnxModelError("EPContext node has no ep_cache_context payload");
  return new Uint8Array(engine);
}
