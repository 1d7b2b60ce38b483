export * from "./env.js";
export * from "./worker.js";
