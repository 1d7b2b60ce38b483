export * from "./catalog.js";
export * from "./denials.js";
export * from "./idempotency.js";
export * from "./limits.js";
export * from "./quota.js";
export * from "./submit.js";
