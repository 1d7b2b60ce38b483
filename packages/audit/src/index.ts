export * from "./anchor.js";
export * from "./key.js";
export * from "./record.js";
export * from "./stream-info.js";
export * from "./verify.js";
export * from "./writer.js";
