export * from "./core-dumps.js";
export * from "./runner.js";
