export * from "./audit.js";
export * from "./canonical.js";
export * from "./errors.js";
export * from "./jobs.js";
export * from "./kserve.js";
export * from "./manifest.js";
export * from "./open-inference.js";
export * from "./tensor.js";
