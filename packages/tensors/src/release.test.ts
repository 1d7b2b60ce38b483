import { describe, expect, it } from "vitest";
import { releasableBuffer, release } from "./release.js";

describe("releasable buffers", () => {
  it("a released buffer and every view of it read as empty", () => {
    const b = releasableBuffer(4096).fill(7);
    const view = new Float32Array(b.buffer, 8, 16);
    release(b.subarray(3, 9));
    expect(b.length).toBe(0);
    expect(b.buffer.byteLength).toBe(0);
    expect(view.length).toBe(0);
  });

  it("leaves alone a buffer it did not make: Node's pool, another's own buffer, a copy", () => {
    const pooled = Buffer.from("shared with other small buffers");
    const own = Buffer.allocUnsafeSlow(4096).fill(1);
    const made = releasableBuffer(64).fill(2);
    const copy = Buffer.from(made);
    for (const b of [pooled, own, copy, new Uint8Array(own.buffer, 10, 10)]) release(b);
    expect(pooled.toString()).toBe("shared with other small buffers");
    expect(own.every((x) => x === 1)).toBe(true);
    expect(copy.length).toBe(64);
    expect(made.length).toBe(64);
  });

  it("releasing twice, or nothing, is harmless", () => {
    const b = releasableBuffer(1024);
    release(b);
    expect(() => release(b)).not.toThrow();
    expect(() => release(null)).not.toThrow();
    expect(() => release(undefined)).not.toThrow();
    expect(() => release(releasableBuffer(0))).not.toThrow();
  });
});
