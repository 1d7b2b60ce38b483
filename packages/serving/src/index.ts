export * from "./batching.js";
export * from "./circuit.js";
export * from "./consumer.js";
export * from "./metrics.js";
export * from "./model-host.js";
