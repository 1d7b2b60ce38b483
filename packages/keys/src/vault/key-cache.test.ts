import { describe, expect, it } from "vitest";
import { KeyCache } from "./key-cache.js";

const key = (byte: number): Buffer => Buffer.alloc(32, byte);

describe("KeyCache", () => {
  it("returns a copy the caller may wipe without touching the cached key", () => {
    const cache = new KeyCache(60_000, 4);
    cache.put("a", key(7));
    const first = cache.get("a");
    expect(first).toEqual(key(7));
    first?.fill(0);
    expect(cache.get("a")).toEqual(key(7));
  });

  it("wipes and forgets entries after the TTL", () => {
    let now = 1_000;
    const cache = new KeyCache(100, 4, () => now);
    const owned = key(1);
    cache.put("a", owned);
    now += 99;
    expect(cache.get("a")).toBeDefined();
    now += 1;
    expect(cache.get("a")).toBeUndefined();
    expect(owned.equals(Buffer.alloc(32))).toBe(true);
  });

  it("sweep wipes expired entries that nobody asked for", () => {
    let now = 0;
    const cache = new KeyCache(10, 4, () => now);
    const a = key(1);
    const b = key(2);
    cache.put("a", a);
    now = 5;
    cache.put("b", b);
    now = 12;
    expect(cache.sweep()).toBe(1);
    expect(a.equals(Buffer.alloc(32))).toBe(true);
    expect(b.equals(key(2))).toBe(true);
    expect(cache.size).toBe(1);
  });

  it("evicts (and wipes) the least recently used entry at the size bound", () => {
    const cache = new KeyCache(60_000, 2);
    const a = key(1);
    const b = key(2);
    const c = key(3);
    cache.put("a", a);
    cache.put("b", b);
    cache.get("a"); // a is now more recent than b
    cache.put("c", c);
    expect(cache.size).toBe(2);
    expect(cache.get("b")).toBeUndefined();
    expect(b.equals(Buffer.alloc(32))).toBe(true);
    expect(cache.get("a")).toEqual(key(1));
    expect(cache.get("c")).toEqual(key(3));
  });

  it("replacing an entry wipes the old key; clear wipes everything", () => {
    const cache = new KeyCache(60_000, 4);
    const old = key(1);
    const fresh = key(2);
    cache.put("a", old);
    cache.put("a", fresh);
    expect(old.equals(Buffer.alloc(32))).toBe(true);
    cache.clear();
    expect(fresh.equals(Buffer.alloc(32))).toBe(true);
    expect(cache.size).toBe(0);
  });

  it("a TTL of 0 disables caching and wipes what it is given", () => {
    const cache = new KeyCache(0, 4);
    const k = key(9);
    cache.put("a", k);
    expect(cache.get("a")).toBeUndefined();
    expect(k.equals(Buffer.alloc(32))).toBe(true);
  });
});
