import { CitadelError } from "@citadel/contracts";
import { describe, expect, it } from "vitest";
import { asCitadel } from "./submit.js";

// A submit that meets an unreachable job store (a Redis Cluster failing over, a Redis
// restarting) is refused 503 QUEUE_UNAVAILABLE, never 500: the client retries with its
// Idempotency-Key (found by the reliability suite's failover scenario).
describe("asCitadel", () => {
  it.each([
    "Too many Cluster redirections. Last error: Error: Connection is closed.",
    "Too many Cluster redirections. Last error: ReplyError: MOVED 14064 127.0.0.1:41015",
    "CLUSTERDOWN The cluster is down",
    "Connection is closed.",
  ])("maps a job store that cannot be reached (%s) to QUEUE_UNAVAILABLE", (message) => {
    const cause = new Error(message);
    const e = asCitadel(cause);
    expect([e.code, e.cause]).toEqual(["QUEUE_UNAVAILABLE", cause]);
  });

  it("keeps a CitadelError and turns anything else into INTERNAL", () => {
    const refused = new CitadelError("QUOTA_EXCEEDED", "over");
    expect(asCitadel(refused)).toBe(refused);
    expect(asCitadel(new TypeError("x is undefined")).code).toBe("INTERNAL");
  });
});
