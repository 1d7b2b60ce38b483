export * from "./core-dumps.js";
export * from "./host-providers.js";
export * from "./runner.js";
