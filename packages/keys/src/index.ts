export * from "./from-env.js";
export * from "./local.js";
export * from "./provider.js";
export * from "./vault/index.js";
