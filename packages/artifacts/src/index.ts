export * from "./canonical.js";
export * from "./manifest.js";
export * from "./seal.js";
export * from "./signing.js";
