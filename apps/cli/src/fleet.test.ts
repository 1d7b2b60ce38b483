import { describe, expect, it } from "vitest";
import { freePort } from "./fleet.js";

describe("freePort", () => {
  it("never hands out one port twice in a process, though the kernel gives ports back once released", async () => {
    // 2,000 probes over the ~28,000 ephemeral ports: the kernel alone repeats some.
    const ports: number[] = [];
    for (let i = 0; i < 2000; i++) ports.push(await freePort());
    expect(new Set(ports).size).toBe(ports.length);
  });
});
