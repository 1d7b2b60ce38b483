export * from "./batcher.js";
export * from "./circuit.js";
export * from "./consumer.js";
export * from "./executor.js";
export * from "./lease.js";
export * from "./metrics.js";
export * from "./model-host.js";
export * from "./model-io.js";
