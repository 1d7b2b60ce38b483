export * from "./batch.js";
export * from "./codec.js";
export * from "./kserve.js";
export * from "./npy.js";
export * from "./open-inference.js";
export * from "./policy.js";
export * from "./stored.js";
export * from "./validate.js";
