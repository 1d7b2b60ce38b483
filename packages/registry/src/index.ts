export * from "./registry.js";
export * from "./store.js";
