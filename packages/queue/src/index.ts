export * from "./follow.js";
export * from "./jobs.js";
export * from "./names.js";
export * from "./outbox.js";
export * from "./redis.js";
export * from "./scripts/index.js";
export * from "./settle-calls.js";
export * from "./stream-group.js";
