import { describe, expect, it } from "vitest";
import { LruBound } from "./lru.js";

const idle = () => false;

describe("LruBound", () => {
  it("admits without evicting while under the count bound", () => {
    const lru = new LruBound<string>({ maxModels: 2 });
    expect(lru.admit("a", 10, idle)).toEqual([]);
    expect(lru.admit("b", 10, idle)).toEqual([]);
    expect(lru.keys()).toEqual(["a", "b"]);
    expect(lru.size).toBe(2);
    expect(lru.bytes).toBe(20);
  });

  it("evicts the least recently used, where use is touch, not load order", () => {
    const lru = new LruBound<string>({ maxModels: 2 });
    lru.admit("a", 1, idle);
    lru.admit("b", 1, idle);
    lru.touch("a");
    expect(lru.admit("c", 1, idle)).toEqual(["b"]);
    expect(lru.keys()).toEqual(["a", "c"]);
    expect(lru.admit("d", 1, idle)).toEqual(["a"]);
    expect(lru.keys()).toEqual(["c", "d"]);
  });

  it("never evicts a busy model: skips it for the next least recently used", () => {
    const lru = new LruBound<string>({ maxModels: 2 });
    lru.admit("a", 1, idle);
    lru.admit("b", 1, idle);
    expect(lru.admit("c", 1, (k) => k === "a")).toEqual(["b"]);
    expect(lru.keys()).toEqual(["a", "c"]);
  });

  it("refuses, changing nothing, when every model that would have to go is busy", () => {
    const lru = new LruBound<string>({ maxModels: 2 });
    lru.admit("a", 1, idle);
    lru.admit("b", 1, idle);
    expect(lru.admit("c", 1, () => true)).toBeNull();
    expect(lru.keys()).toEqual(["a", "b"]);
    expect(lru.size).toBe(2);
    // Once one is idle the same request succeeds.
    expect(lru.admit("c", 1, (k) => k === "b")).toEqual(["a"]);
  });

  it("evicts as many as the byte budget needs, oldest first", () => {
    const lru = new LruBound<string>({ maxModels: 10, maxBytes: 100 });
    lru.admit("a", 30, idle);
    lru.admit("b", 30, idle);
    lru.admit("c", 30, idle);
    expect(lru.admit("d", 70, idle)).toEqual(["a", "b"]);
    expect(lru.keys()).toEqual(["c", "d"]);
    expect(lru.bytes).toBe(100);
  });

  it("does not evict for bytes when a partial eviction cannot make room past a busy model", () => {
    const lru = new LruBound<string>({ maxModels: 10, maxBytes: 100 });
    lru.admit("a", 50, idle);
    lru.admit("b", 50, idle);
    expect(lru.admit("c", 80, (k) => k === "b")).toBeNull();
    expect(lru.keys()).toEqual(["a", "b"]);
  });

  it("lets a model larger than the whole budget in alone", () => {
    const lru = new LruBound<string>({ maxModels: 4, maxBytes: 100 });
    lru.admit("a", 40, idle);
    expect(lru.admit("huge", 500, idle)).toEqual(["a"]);
    expect(lru.keys()).toEqual(["huge"]);
    expect(lru.admit("b", 10, idle)).toEqual(["huge"]);
  });

  it("remove frees the slot and its bytes; touch and remove of an unknown key do nothing", () => {
    const lru = new LruBound<string>({ maxModels: 1, maxBytes: 100 });
    lru.admit("a", 60, idle);
    lru.touch("zzz");
    expect(lru.remove("zzz")).toBe(false);
    expect(lru.remove("a")).toBe(true);
    expect(lru.bytes).toBe(0);
    expect(lru.admit("b", 100, idle)).toEqual([]);
  });

  it("rejects a bound that could hold nothing and a double admit", () => {
    expect(() => new LruBound({ maxModels: 0 })).toThrow(RangeError);
    expect(() => new LruBound({ maxModels: 1, maxBytes: 0 })).toThrow(RangeError);
    const lru = new LruBound<string>({ maxModels: 2 });
    lru.admit("a", 1, idle);
    expect(() => lru.admit("a", 1, idle)).toThrow();
  });
});
