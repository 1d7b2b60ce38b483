export {
  buildConvNet,
  buildHeavyConvNet,
  type ConvLayerParameters,
  type ConvNetOptions,
  type ConvNetParameters,
  convNetIo,
  convNetParameters,
  HEAVY_CONVNET_DEFAULTS,
  heavyConvNetParameters,
  type ResolvedConvNetOptions,
  referenceConvNet,
} from "./convnet.js";
export {
  EPCONTEXT_DOMAIN,
  EPCONTEXT_OP_TYPE,
  type EpContextOptions,
  MAX_EMBEDDED_ENGINE_BYTES,
  TENSORRT_EP_SOURCE,
  wrapEngineAsEpContext,
} from "./epcontext.js";
export {
  type EpContextInfo,
  extractEpContextEngine,
  inspectModel,
  type ModelInfo,
  type OpsetImport,
  UNKNOWN_DIM,
} from "./inspect.js";
export { OnnxModelError } from "./onnx-model-error.js";
export { mulberry32 } from "./prng.js";
export { DATA_TYPE, type Dtype, type IoSpec } from "./proto.js";
export {
  buildBatchAxisLastModel,
  buildCastModel,
  buildFailingModel,
  buildIdentityModel,
  buildLookupModel,
  buildMultiInputModel,
  buildNoBatchModel,
  buildScalarInputModel,
} from "./simple.js";
export { buildSlowModel, SLOW_MODEL_DEFAULT_SIZE, SLOW_MODEL_TIMINGS, type SlowModelOptions } from "./slow.js";
