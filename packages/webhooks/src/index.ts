export * from "./addresses.js";
export * from "./delivery.js";
export * from "./key.js";
export * from "./post.js";
export * from "./record.js";
export * from "./relay.js";
export * from "./sign.js";
export * from "./target.js";
