import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { cliArgs, type FleetProcess, freePort, startProcess } from "@citadel/cli/fleet";
import { SignedManifest } from "@citadel/contracts";
import { LocalKeyProvider } from "@citadel/keys";
import { buildConvNet } from "@citadel/onnx";
import { deploymentKeyPattern } from "@citadel/queue";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { b64, deletePrefix, redisUrl } from "../support/fleet.js";
import { tempDir } from "../support/temp-dirs.js";

/**
 * A full run as separate processes — seal, publish, load, infer — with the working
 * directory and TMPDIR pointed at fresh folders, then every file written there, in the
 * model store, in Redis and in the logs is searched for the plaintext model and secrets.
 */
const root = tempDir("leak");
const src = path.join(root, "src"); // the operator's input model: the only plaintext allowed on disk
const work = path.join(root, "work");
const tmp = path.join(root, "tmp");
const store = path.join(root, "store");
const prefix = `{leak-${randomBytes(4).toString("hex")}}`;
const model = buildConvNet({ seed: 99, filters: 16 });
const env = {
  REDIS_URL: "",
  CITADEL_PREFIX: prefix,
  MODEL_STORE_DIR: store,
  KEY_PROVIDER: "local",
  LOCAL_KEYRING: path.join(work, ".citadel", "keyring.json"),
  TMPDIR: tmp,
  LOG_LEVEL: "debug",
  NODE_ENV: "development",
};
const procs: FleetProcess[] = [];
let apiKey = "";
let redis: Redis;
// A distinctive input pattern, to find tensor data wherever it might leak.
const input = Float32Array.from({ length: 3072 }, (_, i) => Math.fround(0.123456 + i * 1e-4));

function citadel(...args: string[]): string {
  const r = spawnSync(process.execPath, [...cliArgs(), ...args], {
    cwd: work,
    env: { PATH: process.env.PATH ?? "", HOME: work, ...env },
    encoding: "utf8",
  });
  if (r.status !== 0) throw new Error(`citadel ${args[0]} failed: ${r.stderr}`);
  // stdout is the command's answer (issue-key prints the new key once, by design); stderr is its log.
  writeFileSync(path.join(work, "logs", `cli-${args.join("-").replace(/[^a-z-]/g, "")}.log`), r.stderr);
  return r.stdout;
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? filesUnder(p) : e.isFile() ? [p] : [];
  });
}

/** Does `hay` contain any 64-byte window of `needle`? Indexed by the window's first 8 bytes. */
function containsWindow(hay: Buffer, needle: Buffer, w = 64): boolean {
  const index = new Map<string, number[]>();
  for (let i = 0; i + w <= needle.length; i++) {
    const k = needle.subarray(i, i + 8).toString("latin1");
    index.set(k, [...(index.get(k) ?? []), i]);
  }
  for (let j = 0; j + w <= hay.length; j++) {
    const starts = index.get(hay.subarray(j, j + 8).toString("latin1"));
    if (!starts) continue;
    for (const i of starts) if (hay.subarray(j, j + w).equals(needle.subarray(i, i + w))) return true;
  }
  return false;
}

beforeAll(async () => {
  env.REDIS_URL = redisUrl();
  for (const d of [src, work, tmp, path.join(work, "logs")]) mkdirSync(d, { recursive: true });
  writeFileSync(path.join(src, "model.onnx"), model);
  citadel("keys", "init");
  citadel(
    "seal",
    path.join(src, "model.onnx"),
    "--name",
    "leaky",
    "--version",
    "1",
    "--out",
    path.join(work, "sealed"),
  );
  citadel("publish", path.join(work, "sealed", "leaky-1.manifest.json"));
  citadel("tenants", "add", "t1", "--models", "leaky");
  apiKey = citadel("tenants", "issue-key", "t1").trim();
  const apiPort = await freePort();
  const workerPort = await freePort();
  const logs = path.join(work, "logs");
  procs.push(
    await startProcess(
      "api",
      "api",
      {
        ...env,
        API_HOST: "127.0.0.1",
        API_PORT: String(apiPort),
        METRICS_HOST: "127.0.0.1",
        METRICS_PORT: "0",
        BOARD_ADMIN_PASSWORD: "board-password-secret-1",
      },
      logs,
      `http://127.0.0.1:${apiPort}/readyz`,
      { cwd: work },
    ),
    await startProcess(
      "worker",
      "worker",
      { ...env, METRICS_HOST: "127.0.0.1", METRICS_PORT: String(workerPort), RUNTIME_THREADS: "1" },
      logs,
      `http://127.0.0.1:${workerPort}/readyz`,
      { cwd: work },
    ),
  );
  const headers = { authorization: `Bearer ${apiKey}`, "content-type": "application/json" };
  const api = procs[0]?.url;
  const sub = await fetch(`${api}/v1/jobs`, {
    method: "POST",
    headers,
    body: JSON.stringify({
      model: "leaky",
      inputs: { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(input) } },
    }),
  });
  const { id } = (await sub.json()) as { id: string };
  // Long-poll until final: one bounded wait would fail on a slow machine, not on a wrong answer.
  let done: { status: string } = { status: "queued" };
  while (done.status === "queued" || done.status === "active")
    done = (await (await fetch(`${api}/v1/jobs/${id}?wait=20000`, { headers })).json()) as { status: string };
  expect(done.status).toBe("completed");
  // Provoke error paths too: a bad key and a bad tensor.
  await fetch(`${api}/v1/jobs`, {
    method: "POST",
    headers: { ...headers, authorization: `Bearer ${apiKey}x` },
    body: "{}",
  });
  await fetch(`${api}/v1/jobs`, {
    method: "POST",
    headers,
    body: JSON.stringify({
      model: "leaky",
      inputs: { x: { dtype: "float32", shape: [1, 3, 32, 31], data: b64(input) } },
    }),
  });
  for (const p of procs) expect(await p.stop()).toBe(0);
  redis = new Redis(redisUrl());
});

afterAll(async () => {
  for (const p of procs) await p.stop("SIGKILL");
  if (redis) {
    await deletePrefix(redis, prefix);
    await redis.quit();
  }
});

describe("nothing secret leaks", () => {
  it("the window search finds a 64-byte slice hidden in other bytes (the check can fail)", () => {
    const m = Buffer.from(model);
    const hay = Buffer.concat([Buffer.alloc(1000, 7), m.subarray(500, 570), Buffer.alloc(1000, 9)]);
    expect(containsWindow(hay, m)).toBe(true);
    expect(containsWindow(Buffer.concat([Buffer.alloc(1000, 7), m.subarray(500, 560)]), m)).toBe(false);
  });

  it("writes no plaintext model bytes and no data key to any file, and none to Redis", async () => {
    const keys = new LocalKeyProvider(env.LOCAL_KEYRING);
    const signed = SignedManifest.parse(
      JSON.parse(readFileSync(path.join(work, "sealed", "leaky-1.manifest.json"), "utf8")),
    );
    const dataKey = await keys.unwrapDataKey(signed.manifest.artifact.keyName, signed.manifest.artifact.wrappedKey);
    const auditKey = keys.auditSecret();
    const keyForms = [dataKey, Buffer.from(dataKey.toString("base64")), Buffer.from(dataKey.toString("hex"))];
    const auditForms = [auditKey, Buffer.from(auditKey.toString("base64")), Buffer.from(auditKey.toString("hex"))];
    const files = [...filesUnder(work), ...filesUnder(tmp), ...filesUnder(store)];
    expect(files.length).toBeGreaterThan(5);
    for (const f of files) {
      const content = readFileSync(f);
      expect(containsWindow(content, Buffer.from(model)), `plaintext model bytes in ${f}`).toBe(false);
      for (const k of keyForms) expect(content.includes(k), `data key in ${f}`).toBe(false);
    }
    // Redis: every value under the deployment's prefix.
    let cursor = "0";
    let seen = 0;
    do {
      const [next, ks] = await redis.scan(cursor, "MATCH", deploymentKeyPattern(prefix), "COUNT", 500);
      cursor = next;
      for (const k of ks) {
        const dump = await redis.dumpBuffer(k);
        if (!dump) continue;
        seen++;
        expect(containsWindow(dump, Buffer.from(model)), `plaintext model in redis key ${k}`).toBe(false);
        for (const kf of keyForms) expect(dump.includes(kf), `data key in redis key ${k}`).toBe(false);
        for (const af of auditForms) expect(dump.includes(af), `audit key in redis key ${k}`).toBe(false);
      }
    } while (cursor !== "0");
    expect(seen).toBeGreaterThan(5);
    // TMPDIR holds tsx's transpile cache of our own source; it was searched above with the rest.
    expect(filesUnder(tmp).length).toBeGreaterThan(0);
    dataKey.fill(0);
    auditKey.fill(0);
  });

  it("logs and errors never contain the API key, a data key, keyring secrets, board password or tensor data", () => {
    const logs = filesUnder(path.join(work, "logs"))
      .map((f) => readFileSync(f, "utf8"))
      .join("\n");
    expect(logs.length).toBeGreaterThan(1000);
    expect(logs).toContain("job.completed"); // the audit trail is in the log
    const ring = JSON.parse(readFileSync(env.LOCAL_KEYRING, "utf8")) as {
      masterKeys: Record<string, { key: string }[]>;
      signing: { privateKeyPem: string }[];
      audit: { key: string };
    };
    const secrets = [
      apiKey,
      apiKey.slice(4, 30),
      "board-password-secret-1",
      ...Object.values(ring.masterKeys).flatMap((v) => v.map((k) => k.key)),
      ...ring.signing.map((s) => s.privateKeyPem.split("\n")[1] ?? "x"),
      ring.audit.key,
      Buffer.from(ring.audit.key, "base64").toString("hex"),
      b64(input).slice(0, 64),
      Buffer.from(input.buffer).toString("hex").slice(0, 64),
    ];
    for (const s of secrets) expect(logs.includes(s), `secret ${s.slice(0, 6)}… in logs`).toBe(false);
  });
});
