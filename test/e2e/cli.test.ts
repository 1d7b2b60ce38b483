import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { auditHeadKey, auditStreamKey, auditWritersKey } from "@citadel/audit";
import { appArgs, cliArgs } from "@citadel/cli/fleet";
import { SignedManifest } from "@citadel/contracts";
import { buildConvNet, inspectModel } from "@citadel/onnx";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deletePrefix, redisUrl } from "../support/fleet.js";
import { tempDir } from "../support/temp-dirs.js";

const dir = tempDir("cli");
const prefix = `{cli-${randomBytes(4).toString("hex")}}`;
let redis: Redis;

function citadelWith(env: Record<string, string>, ...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, [...cliArgs(), ...args], {
    cwd: dir,
    encoding: "utf8",
    env: {
      PATH: process.env.PATH ?? "",
      REDIS_URL: redisUrl(),
      CITADEL_PREFIX: prefix,
      MODEL_STORE_DIR: path.join(dir, "store"),
      LOCAL_KEYRING: path.join(dir, "keyring.json"),
      ...env,
    },
  });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}
const citadel = (...args: string[]) => citadelWith({}, ...args);

beforeAll(() => {
  redis = new Redis(redisUrl());
  mkdirSync(path.join(dir, "in"));
  writeFileSync(path.join(dir, "in", "conv.onnx"), buildConvNet());
  writeFileSync(
    path.join(dir, "in", "spec.json"),
    JSON.stringify({ maxBatch: 4, timeoutMs: 1000, inputs: { x: { range: [-5, 5] } }, outputPolicy: { topK: 2 } }),
  );
});
afterAll(async () => {
  await deletePrefix(redis, prefix);
  await redis.quit();
});

describe("citadel CLI", () => {
  it("documents every verb", () => {
    const help = citadel("--help");
    expect(help.code).toBe(0);
    for (const verb of [
      "keys",
      "seal",
      "publish",
      "route",
      "verify",
      "models",
      "rewrap",
      "retire",
      "tenants",
      "audit",
      "enqueue",
      "submit",
      "jobs",
      "demo",
    ])
      expect(help.out).toContain(verb);
    for (const verb of [
      "seal",
      "publish",
      "verify",
      "retire",
      "keys rotate",
      "tenants add",
      "audit anchor",
      "submit",
      "jobs wait",
    ])
      expect(citadel(...verb.split(" "), "--help").code).toBe(0);
  });

  it("seals with the spec derived from the model plus a spec file, publishes, lists and verifies", () => {
    expect(citadel("keys", "init").out).toMatch(/created/);
    const sealed = citadel(
      "seal",
      "in/conv.onnx",
      "--name",
      "conv",
      "--version",
      "1",
      "--spec",
      "in/spec.json",
      "--out",
      "sealed",
    );
    expect(sealed.code, sealed.err).toBe(0);
    const m = SignedManifest.parse(
      JSON.parse(readFileSync(path.join(dir, "sealed", "conv-1.manifest.json"), "utf8")),
    ).manifest;
    expect(m.inputs).toEqual([{ name: "x", dtype: "float32", shape: [null, 3, 32, 32], batchAxis: 0, range: [-5, 5] }]);
    expect(m.outputs[0]).toMatchObject({ name: "probs", shape: [null, 10], batchAxis: 0 });
    expect([m.maxBatch, m.timeoutMs, m.outputPolicy]).toEqual([4, 1000, { topK: 2 }]);
    expect(m.artifact.wrappedKey).toMatch(/^local:v1:/);
    expect(citadel("publish", "sealed/conv-1.manifest.json").code).toBe(0);
    expect(citadel("models").out).toMatch(/conv\s+versions 1\s+routing \{"stable":"1","canaryWeight":0\}/);
    const v = citadel("verify", "conv", "1");
    expect(v.code, v.err).toBe(0);
    expect(v.out).toMatch(/^ok conv@1: signature by a pinned key/);
  });

  it("rotates the key and rewraps stored keys without touching artifacts; old and new both load", () => {
    const artifactBefore = readFileSync(path.join(dir, "store", "conv", "1.sealed"));
    expect(citadel("keys", "rotate").out).toMatch(/now at version 2/);
    expect(citadel("verify", "conv", "1").code).toBe(0); // sealed under v1, still loads
    const rw = citadel("rewrap");
    expect(rw.code, rw.err).toBe(0);
    expect(rw.out).toMatch(/rewrapped conv@1: local:v1 → local:v2/);
    expect(readFileSync(path.join(dir, "store", "conv", "1.sealed")).equals(artifactBefore)).toBe(true);
    expect(citadel("verify", "conv", "1").code).toBe(0);
  });

  it("rewrap refuses a manifest tampered in Redis and writes nothing", async () => {
    const manifestsKey = `${prefix}:registry:manifests:loose`;
    const seal = citadel(
      "seal",
      "in/conv.onnx",
      "--name",
      "loose",
      "--version",
      "1",
      "--spec",
      "in/spec.json",
      "--out",
      "sealed",
    );
    expect(seal.code, seal.err).toBe(0);
    expect(citadel("publish", "sealed/loose-1.manifest.json").code).toBe(0);
    const signed = JSON.parse((await redis.hget(manifestsKey, "1")) ?? "{}");
    // A Redis writer loosens the inputs and drops the output policy, keeping the old
    // signature (or none, or a copy of another version's manifest signed for that one).
    const loosened = {
      ...signed,
      manifest: { ...signed.manifest, inputs: [{ ...signed.manifest.inputs[0], range: undefined }], outputPolicy: {} },
    };
    const cases: [string, unknown, RegExp][] = [
      ["loosened", loosened, /SIGNATURE_INVALID/],
      ["unsigned", { manifest: loosened.manifest }, /SIGNATURE_MISSING/],
      ["another version's", { ...signed, manifest: { ...signed.manifest } }, /MANIFEST_MODEL_MISMATCH/],
    ];
    expect(citadel("keys", "rotate").code).toBe(0); // so that rewrap has work to do
    for (const [what, body, code] of cases) {
      const slot = what === "another version's" ? "2" : "1";
      const raw = JSON.stringify(body);
      await redis.hset(manifestsKey, slot, raw);
      const rw = citadel("rewrap");
      expect(rw.code, `${what}: ${rw.out}`).toBe(1);
      expect(rw.err, what).toMatch(code);
      expect(rw.err, what).toMatch(/loose@/);
      // Redis still holds the tampered bytes: not a copy freshly signed by us.
      expect(await redis.hget(manifestsKey, slot), what).toBe(raw);
      await redis.hset(manifestsKey, "1", JSON.stringify(signed));
      await redis.hdel(manifestsKey, "2");
    }
    // The untampered manifest rewraps as before.
    expect(citadel("rewrap").code).toBe(0);
  });

  it("wraps a raw TensorRT engine as an EPContext model, checking the profile covers the batch", () => {
    writeFileSync(
      path.join(dir, "in", "model.engine"),
      Buffer.from("not really a TensorRT engine, but bytes all the same"),
    );
    writeFileSync(
      path.join(dir, "in", "io.json"),
      JSON.stringify({
        inputs: [{ name: "images", dtype: "float32", shape: ["N", 3, 64, 64] }],
        outputs: [{ name: "logits", dtype: "float32", shape: ["N", 5] }],
      }),
    );
    writeFileSync(
      path.join(dir, "in", "trt.json"),
      JSON.stringify({ maxBatch: 16, tensorrt: { gpuArch: "86", minBatch: 1, optBatch: 8, maxBatch: 16 } }),
    );
    const ok = citadel(
      "seal",
      "in/model.engine",
      "--engine-io",
      "in/io.json",
      "--spec",
      "in/trt.json",
      "--name",
      "trt",
      "--version",
      "1",
      "--out",
      "sealed",
    );
    expect(ok.code, ok.err).toBe(0);
    const m = SignedManifest.parse(
      JSON.parse(readFileSync(path.join(dir, "sealed", "trt-1.manifest.json"), "utf8")),
    ).manifest;
    expect([m.format, m.executionProviders, m.inputs[0]?.shape]).toEqual([
      "tensorrt-epcontext",
      ["tensorrt"],
      [null, 3, 64, 64],
    ]);
    writeFileSync(
      path.join(dir, "in", "bad.json"),
      JSON.stringify({ maxBatch: 32, tensorrt: { gpuArch: "86", minBatch: 1, optBatch: 8, maxBatch: 16 } }),
    );
    const bad = citadel(
      "seal",
      "in/model.engine",
      "--engine-io",
      "in/io.json",
      "--spec",
      "in/bad.json",
      "--name",
      "trt",
      "--version",
      "2",
    );
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/MANIFEST_INVALID: engine profile 1\/8\/16 does not cover batch 1\.\.32/);
  });

  it("the sealed engine is an EPContext model (embed_mode=1) around the exact engine bytes", async () => {
    const { LocalKeyProvider } = await import("@citadel/keys");
    const { openArtifact, verifyManifest } = await import("@citadel/artifacts");
    const keys = new LocalKeyProvider(path.join(dir, "keyring.json"));
    const raw = JSON.parse(readFileSync(path.join(dir, "sealed", "trt-1.manifest.json"), "utf8"));
    const manifest = verifyManifest(raw, await keys.publicKeys());
    const plain = await openArtifact(manifest, readFileSync(path.join(dir, "sealed", "trt-1.sealed")), keys);
    const info = inspectModel(plain);
    plain.fill(0);
    expect(info.epContext).toMatchObject({
      source: "TensorrtExecutionProvider",
      embedMode: 1,
      hardwareArchitecture: "86",
    });
    expect(info.epContext?.engineBytes).toBe(Buffer.byteLength("not really a TensorRT engine, but bytes all the same"));
    expect(info.inputs.map((i) => i.name)).toEqual(["images"]);
  });

  it("audit verify and anchor: records MACed with the CLI's key verify; forgeries and a vanished writer exit 2", async () => {
    const empty = citadel("audit", "verify");
    expect([empty.code, empty.out.trim()]).toEqual([0, "0 records from 0 writers: chain intact"]);
    // `retire` writes an audit record, MACed with the CLI's audit key (here the dev keyring's).
    const seal = citadel("seal", "in/conv.onnx", "--name", "conv", "--version", "2", "--spec", "in/spec.json");
    expect(seal.code, seal.err).toBe(0);
    expect(citadel("publish", "sealed/conv-2.manifest.json", "--canary", "0.1").code).toBe(0);
    expect(citadel("retire", "conv", "2", "--reason", "superseded").out).toMatch(/^retired conv@2: superseded/);
    const ok = citadel("audit", "verify");
    expect(ok.code).toBe(0);
    expect(ok.out.trim().split("\n")).toEqual([
      "1 records from 1 writers: chain intact",
      expect.stringMatching(/^ {2}cli:\S+: 1 records, live, ok$/),
    ]);
    const anchored = citadel("audit", "anchor", "--out", "anchor.json");
    expect(anchored.code, anchored.err).toBe(0);
    expect(anchored.out).toMatch(/^anchored 1 writers and 1 entries at .* in anchor\.json/);
    expect(citadel("audit", "verify", "--anchor", "anchor.json").code).toBe(0);
    // Production never falls back to the dev keyring: only the key files given count.
    writeFileSync(path.join(dir, "cli.key"), randomBytes(32).toString("base64"));
    writeFileSync(path.join(dir, "short.key"), randomBytes(16).toString("base64"));
    const production = { NODE_ENV: "production", ALLOW_LOCAL_KEYS_IN_PRODUCTION: "true" };
    const strange = citadelWith({ ...production, AUDIT_KEY_FILE: path.join(dir, "cli.key") }, "audit", "verify");
    expect(strange.code).toBe(2);
    expect(strange.out).toMatch(/is keyed with an unknown key/);
    const none = citadelWith(production, "audit", "verify");
    expect([none.code, none.err.trim()]).toEqual([
      1,
      "citadel: no audit keys to verify with: pass --key-file [role=]<file> or set AUDIT_KEY_FILES",
    ]);
    const short = citadelWith(production, "audit", "verify", "--key-file", "api=short.key");
    expect([short.code, short.err.trim()]).toEqual([
      1,
      "citadel: short.key holds a 16-byte key; at least 32 bytes are needed",
    ]);
    // An unkeyed record, as the old chain wrote them, is a forgery now; so is a writer
    // listed with no keyed lease.
    await redis.hset(auditWritersKey(prefix), "x", "1");
    await redis.xadd(
      auditStreamKey(prefix, "x"),
      "*",
      "r",
      JSON.stringify({ writer: "x", seq: 1, prev: "0", ts: "t", event: "job.completed", hash: "0" }),
    );
    const forged = citadel("audit", "verify");
    expect(forged.code).toBe(2);
    expect(forged.out).toMatch(/x#1 carries no key id/);
    expect(forged.out).toMatch(/x: records with no head \(head deleted, or a forged writer\)/);
    expect(forged.out).toMatch(/^ {2}x: 1 records, live, \d+ problem\(s\)$/m);
    // A writer's keys deleted while its lease runs show at once; removed whole (its entry
    // in the writers hash too), only against an anchor.
    const writer = (await redis.hkeys(auditWritersKey(prefix))).find((w) => w.startsWith("cli:")) ?? "";
    await redis.del(auditStreamKey(prefix, writer), auditHeadKey(prefix, writer));
    const deleted = citadel("audit", "verify");
    expect(deleted.code).toBe(2);
    expect(deleted.out).toMatch(
      new RegExp(`${writer}: its stream and head are gone though its lease runs to .* \\(deleted\\)`),
    );
    await redis.hdel(auditWritersKey(prefix), writer);
    const vanished = citadel("audit", "verify", "--anchor", "anchor.json");
    expect(vanished.code).toBe(2);
    expect(vanished.out).toMatch(
      new RegExp(
        `${writer}: anchored at #1 but gone from the writers hash though its lease ran to .* \\(writer removed\\)`,
      ),
    );
  });

  it("every process refuses bad configuration at start-up, naming every problem", () => {
    for (const app of ["api", "worker"] as const) {
      const r = spawnSync(process.execPath, appArgs(app), {
        encoding: "utf8",
        env: {
          PATH: process.env.PATH ?? "",
          REDIS_URL: "not-a-url",
          LOG_LEVEL: "loud",
          KEY_PROVIDER: "vault",
          NODE_ENV: "production",
        },
      });
      expect(r.status, r.stderr).toBe(78);
      for (const name of ["REDIS_URL", "LOG_LEVEL", "VAULT_ADDR", "TRUSTED_SIGNERS", "AUDIT_KEY_FILE"])
        expect(r.stderr).toContain(name);
      expect(r.stderr).not.toContain("not-a-url");
    }
    // A key file that is there but too short is refused as well, without echoing it.
    const shortKey = randomBytes(16).toString("base64");
    writeFileSync(path.join(dir, "too-short.key"), shortKey);
    for (const app of ["api", "worker"] as const) {
      const r = spawnSync(process.execPath, appArgs(app), {
        encoding: "utf8",
        env: { PATH: process.env.PATH ?? "", AUDIT_KEY_FILE: path.join(dir, "too-short.key") },
      });
      expect(r.status, r.stderr).toBe(78);
      expect(r.stderr).toMatch(/AUDIT_KEY_FILE: .*too-short\.key holds a 16-byte key; at least 32 bytes are needed/);
      expect(r.stderr).not.toContain(shortKey);
    }
  });

  it("fails with one clear line, never a stack", () => {
    const r = citadel("verify", "nope", "1");
    expect(r.code).toBe(1);
    expect(r.err.trim()).toBe("citadel: MODEL_NOT_FOUND: nope@1 is not published");
    const bad = citadel("publish", "sealed/missing.manifest.json");
    expect(bad.code).toBe(1);
    expect(bad.err).not.toMatch(/\n\s+at /);
    expect(citadel("route", "conv", "--stable", "9").err).toMatch(/MODEL_NOT_FOUND: conv@9 is not published/);
  });
});
