// Thin, typed helpers around the protobufjs-generated `onnx` namespace (onnx-proto 8, ONNX v1.10.2 schema).
// Everything here builds plain `I*Proto` objects; `encodeModel` turns a model into bytes.
import onnxProto from "onnx-proto";

export const { onnx } = onnxProto;

export type ModelProtoInit = onnxProto.onnx.IModelProto;
export type GraphProtoInit = onnxProto.onnx.IGraphProto;
export type NodeProtoInit = onnxProto.onnx.INodeProto;
export type TensorProtoInit = onnxProto.onnx.ITensorProto;
export type ValueInfoProtoInit = onnxProto.onnx.IValueInfoProto;
export type AttributeProtoInit = onnxProto.onnx.IAttributeProto;
export type OperatorSetIdInit = onnxProto.onnx.IOperatorSetIdProto;

/** Element types accepted in an {@link IoSpec}; names follow onnxruntime's `Tensor.Type`. */
export type Dtype =
  | "float32"
  | "float16"
  | "bfloat16"
  | "float64"
  | "int8"
  | "uint8"
  | "int16"
  | "uint16"
  | "int32"
  | "uint32"
  | "int64"
  | "uint64"
  | "bool"
  | "string";

/** A graph input or output: a dim is a fixed size (number) or a symbolic `dim_param` (string, e.g. "N"). */
export interface IoSpec {
  name: string;
  dtype: Dtype;
  shape: (number | string)[];
}

/** ONNX `TensorProto.DataType` codes (onnx.proto3). */
export const DATA_TYPE: Readonly<Record<Dtype, number>> = {
  float32: 1,
  uint8: 2,
  int8: 3,
  uint16: 4,
  int16: 5,
  int32: 6,
  int64: 7,
  string: 8,
  bool: 9,
  float16: 10,
  float64: 11,
  uint32: 12,
  uint64: 13,
  bfloat16: 16,
};

const DTYPE_BY_CODE: ReadonlyMap<number, Dtype> = new Map(
  (Object.entries(DATA_TYPE) as [Dtype, number][]).map(([dtype, code]) => [code, dtype]),
);

export function dtypeFromCode(code: number): Dtype | undefined {
  return DTYPE_BY_CODE.get(code);
}

/** ONNX `AttributeProto.AttributeType` codes. */
export const ATTRIBUTE_TYPE = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, GRAPH: 5, FLOATS: 6, INTS: 7 } as const;

/** IR version 8 is the newest the onnx-proto schema knows and the first that allows opset 17. */
export const IR_VERSION = 8;
export const DEFAULT_OPSET = 17;
export const PRODUCER_NAME = "@citadel/onnx";

export function valueInfo(spec: IoSpec): ValueInfoProtoInit {
  return {
    name: spec.name,
    type: {
      tensorType: {
        elemType: DATA_TYPE[spec.dtype],
        shape: { dim: spec.shape.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

/** A float32 initializer stored as little-endian `raw_data`. */
export function floatTensor(name: string, dims: readonly number[], values: ArrayLike<number>): TensorProtoInit {
  checkSize(name, dims, values.length);
  const raw = new Uint8Array(values.length * 4);
  const view = new DataView(raw.buffer);
  for (let i = 0; i < values.length; i++) view.setFloat32(i * 4, values[i] ?? 0, true);
  return { name, dims: [...dims], dataType: DATA_TYPE.float32, rawData: raw };
}

/** An int64 initializer stored as little-endian `raw_data`. */
export function int64Tensor(name: string, dims: readonly number[], values: readonly number[]): TensorProtoInit {
  checkSize(name, dims, values.length);
  const raw = new Uint8Array(values.length * 8);
  const view = new DataView(raw.buffer);
  for (let i = 0; i < values.length; i++) view.setBigInt64(i * 8, BigInt(values[i] ?? 0), true);
  return { name, dims: [...dims], dataType: DATA_TYPE.int64, rawData: raw };
}

function checkSize(name: string, dims: readonly number[], length: number): void {
  const size = dims.reduce((a, b) => a * b, 1);
  if (size !== length)
    throw new RangeError(`tensor ${name}: dims [${dims.join(",")}] need ${size} values, got ${length}`);
}

export function intAttr(name: string, value: number): AttributeProtoInit {
  return { name, type: ATTRIBUTE_TYPE.INT, i: value };
}

export function intsAttr(name: string, values: readonly number[]): AttributeProtoInit {
  return { name, type: ATTRIBUTE_TYPE.INTS, ints: [...values] };
}

export function floatAttr(name: string, value: number): AttributeProtoInit {
  return { name, type: ATTRIBUTE_TYPE.FLOAT, f: value };
}

/** A STRING attribute; ONNX strings are bytes, so this also carries arbitrary binary payloads. */
export function bytesAttr(name: string, value: Uint8Array | string): AttributeProtoInit {
  const s = typeof value === "string" ? new TextEncoder().encode(value) : value;
  return { name, type: ATTRIBUTE_TYPE.STRING, s };
}

export function graphAttr(name: string, g: GraphProtoInit): AttributeProtoInit {
  return { name, type: ATTRIBUTE_TYPE.GRAPH, g };
}

export function node(
  opType: string,
  inputs: readonly string[],
  outputs: readonly string[],
  attributes: readonly AttributeProtoInit[] = [],
  domain = "",
): NodeProtoInit {
  return {
    opType,
    name: `${opType}_${outputs[0] ?? "out"}`,
    input: [...inputs],
    output: [...outputs],
    attribute: [...attributes],
    domain,
  };
}

export interface ModelInit {
  graphName: string;
  nodes: NodeProtoInit[];
  inputs: IoSpec[];
  outputs: IoSpec[];
  initializers?: TensorProtoInit[];
  opsetImports?: { domain: string; version: number }[];
  docString?: string;
}

export function makeModel(init: ModelInit): ModelProtoInit {
  return {
    irVersion: IR_VERSION,
    producerName: PRODUCER_NAME,
    producerVersion: "0.1.0",
    opsetImport: init.opsetImports ?? [{ domain: "", version: DEFAULT_OPSET }],
    docString: init.docString ?? "",
    graph: {
      name: init.graphName,
      node: init.nodes,
      input: init.inputs.map(valueInfo),
      output: init.outputs.map(valueInfo),
      initializer: init.initializers ?? [],
    },
  };
}

export function encodeModel(model: ModelProtoInit): Uint8Array {
  const bytes = onnx.ModelProto.encode(model).finish();
  // protobufjs may hand back a view into a pooled buffer: copy into a tight, owned array.
  return new Uint8Array(bytes);
}
