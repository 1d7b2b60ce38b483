// Canonical JSON lives in @citadel/contracts (the audit chain uses it too); kept here for existing imports.
export { canonicalJson } from "@citadel/contracts";
