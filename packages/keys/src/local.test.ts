import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "../../../test/support/temp-dirs.js";
import { initKeyring, LocalKeyProvider } from "./local.js";

// Each test's keyring (master keys) is removed after the file's tests.
const fresh = () => {
  const file = path.join(tempDir("keyring"), "keyring.json");
  initKeyring(file);
  return file;
};

describe("the dev keyring's audit key", () => {
  it("is created by init, 32 random bytes, the same for every reader", () => {
    const file = fresh();
    const a = new LocalKeyProvider(file).auditSecret();
    expect(a).toHaveLength(32);
    expect(new LocalKeyProvider(file).auditSecret().equals(a)).toBe(true);
    expect(new LocalKeyProvider(fresh()).auditSecret().equals(a)).toBe(false);
  });

  it("is derived, stably and per keyring, for a keyring made before audit keys", () => {
    const file = fresh();
    const ring = JSON.parse(readFileSync(file, "utf8")) as { audit?: unknown };
    delete ring.audit;
    writeFileSync(file, JSON.stringify(ring), { mode: 0o600 });
    const derived = new LocalKeyProvider(file).auditSecret();
    expect(derived).toHaveLength(32);
    expect(new LocalKeyProvider(file).auditSecret().equals(derived)).toBe(true);
    // Rotating the signing key adds a key; the derivation uses the first, so it holds.
    new LocalKeyProvider(file).rotateSigningKey();
    expect(new LocalKeyProvider(file).auditSecret().equals(derived)).toBe(true);
    // The file was not rewritten to add one.
    expect((JSON.parse(readFileSync(file, "utf8")) as { audit?: unknown }).audit).toBeUndefined();
  });
});
