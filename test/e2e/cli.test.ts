import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { repoRoot } from "@citadel/cli/fleet";
import { SignedManifest } from "@citadel/contracts";
import { buildConvNet, inspectModel } from "@citadel/onnx";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deletePrefix, redisUrl } from "../support/fleet.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "citadel-cli-"));
const prefix = `{cli-${process.pid}}`;
let redis: Redis;

function citadel(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, [path.join(repoRoot, "apps/cli/bin/citadel.mjs"), ...args], {
    cwd: dir,
    encoding: "utf8",
    env: {
      PATH: process.env.PATH ?? "",
      REDIS_URL: redisUrl(),
      CITADEL_PREFIX: prefix,
      MODEL_STORE_DIR: path.join(dir, "store"),
      LOCAL_KEYRING: path.join(dir, "keyring.json"),
    },
  });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

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
      "tenants",
      "audit",
      "enqueue",
      "demo",
    ])
      expect(help.out).toContain(verb);
    for (const verb of ["seal", "publish", "verify", "keys rotate", "tenants add"])
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

  it("audit verify reports an intact chain, and a forged record with exit 2", async () => {
    const ok = citadel("audit", "verify");
    expect([ok.code, ok.out.trim()]).toEqual([0, "0 records from 0 writers: chain intact"]);
    await redis.xadd(
      `${prefix}:audit`,
      "*",
      "r",
      JSON.stringify({ writer: "x", seq: 1, prev: "0", ts: "t", event: "job.completed", hash: "0" }),
    );
    const bad = citadel("audit", "verify");
    expect(bad.code).toBe(2);
    expect(bad.out).toMatch(/x#1 was edited/);
  });

  it("every process refuses bad configuration at start-up, naming every problem", () => {
    for (const app of ["api", "worker"]) {
      const r = spawnSync(
        process.execPath,
        ["--import", import.meta.resolve("tsx"), path.join(repoRoot, "apps", app, "src", "main.ts")],
        {
          encoding: "utf8",
          env: {
            PATH: process.env.PATH ?? "",
            REDIS_URL: "not-a-url",
            LOG_LEVEL: "loud",
            KEY_PROVIDER: "vault",
            NODE_ENV: "production",
          },
        },
      );
      expect(r.status, r.stderr).toBe(78);
      for (const name of ["REDIS_URL", "LOG_LEVEL", "VAULT_ADDR", "TRUSTED_SIGNERS"]) expect(r.stderr).toContain(name);
      expect(r.stderr).not.toContain("not-a-url");
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
