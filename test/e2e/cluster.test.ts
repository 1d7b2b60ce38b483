import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { type FleetProcess, freePort, startProcess } from "@citadel/cli/fleet";
import { OCR_CLS_PATH } from "@citadel/cli/sample-models";
import { buildConvNet, buildMultiInputModel } from "@citadel/onnx";
import { closeRedis, keys, queueName, redisClient } from "@citadel/queue";
import { TenantStore } from "@citadel/tenants";
import { Cluster, Redis } from "ioredis";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pollUntil } from "../support/api-kit.js";
import { runCli } from "../support/child.js";
import { b64, decodeF32, type Loose, startTestFleet, type TestFleet } from "../support/fleet.js";
import { clusterRoles, ensureRedisBinaries, type LocalCluster, startRedisCluster } from "../support/redis-cluster.js";

// Issue 14 points 1 and 3: the fleet on a real Redis Cluster (3 masters, 3 replicas),
// each model's queue and each tenant in a slot of its own (docs/architecture.md, "Key
// families"). Results must equal direct onnxruntime runs, as on a single Redis
// (test/e2e/fleet.test.ts), and queues of different models live on different masters.

const missing = ensureRedisBinaries();
if (missing) process.stderr.write(`cluster.test: SKIPPED: ${missing}\n`);

let cluster: LocalCluster;
let fleet: TestFleet;
const conv = buildConvNet();
const ocr = new Uint8Array(readFileSync(OCR_CLS_PATH));
const OCR_DIMS = [3, 48, 192];
const sessions: Record<string, ort.InferenceSession> = {};

beforeAll(async () => {
  if (missing) return;
  cluster = await startRedisCluster();
  fleet = await startTestFleet({
    workers: 2,
    env: { REDIS_URL: cluster.url },
    // "parked" has no worker: its jobs stay queued until cancelled.
    workerEnv: { WORKER_MODELS: "conv,ocr-cls,multi" },
  });
  await fleet.publish(conv, { name: "conv", version: "1", spec: { maxBatch: 16, maxQueueDelayMs: 5 } });
  await fleet.publish(ocr, {
    name: "ocr-cls",
    version: "1",
    spec: { maxBatch: 8, maxQueueDelayMs: 5, inputs: { x: { range: [-1, 1], maxDim: 1024 } } },
  });
  await fleet.publish(buildMultiInputModel(), { name: "multi", version: "1", spec: { maxBatch: 8 } });
  await fleet.publish(buildConvNet({ seed: 3 }), { name: "parked", version: "1", spec: {} });
  sessions.conv = await ort.InferenceSession.create(conv);
  sessions["ocr-cls"] = await ort.InferenceSession.create(ocr);
  sessions.multi = await ort.InferenceSession.create(buildMultiInputModel());
}, 120_000);
afterAll(async () => {
  await fleet?.close();
  await cluster?.stop();
  for (const s of Object.values(sessions)) await s.release();
});

/** Which master ("127.0.0.1:port") serves a slot, from the cluster's slot map. */
async function masterOfSlot(c: Cluster): Promise<(slot: number) => string> {
  const ranges = await c.cluster("SLOTS");
  return (slot) => {
    const master = ranges.find(([from, to]) => slot >= from && slot <= to)?.[2];
    if (!master) throw new Error(`no master serves slot ${slot}`);
    return `127.0.0.1:${master[1]}`;
  };
}

function randomInput(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (s / 2147483648) * 2 - 1;
  });
}

async function finalView(id: string): Promise<Loose> {
  let r = await fleet.request("GET", `/v1/jobs/${id}?wait=20000`);
  while (r.status === 200 && (r.json.status === "queued" || r.json.status === "active"))
    r = await fleet.request("GET", `/v1/jobs/${id}?wait=20000`);
  expect(r.status).toBe(200);
  expect(r.json.status, JSON.stringify(r.json.error)).toBe("completed");
  return r.json;
}

/** The view's first output equals onnxruntime's own run of the same input. */
async function expectDirect(model: string, view: Loose, x: Float32Array, shape: number[]): Promise<void> {
  const session = sessions[model] as ort.InferenceSession;
  const direct = await session.run({ x: new ort.Tensor("float32", x, shape) });
  const name = session.outputNames[0] as string;
  const want = direct[name]?.data as Float32Array;
  expect(view.result.outputs[name].shape).toEqual([...(direct[name]?.dims ?? [])]);
  const have = decodeF32(view.result.outputs[name].data);
  expect(have.length).toBe(want.length);
  for (let k = 0; k < want.length; k++)
    expect(Math.abs((have[k] as number) - (want[k] as number))).toBeLessThanOrEqual(1e-6);
}

const jsonJob = (model: string, shape: number[], x: Float32Array) => ({
  model,
  inputs: { x: { dtype: "float32", shape, data: b64(x) } },
});

describe.skipIf(missing !== null)("the fleet on a Redis Cluster of 3 masters and 3 replicas", () => {
  it("runs on a cluster: the processes' clients are Cluster clients", async () => {
    expect(fleet.redis).toBeInstanceOf(Cluster);
    expect(fleet.ctx.redis).toBeInstanceOf(Cluster);
    expect(clusterRoles(String(await (fleet.redis as Cluster).cluster("NODES")))).toEqual({
      master: 3,
      slave: 3,
      other: 0,
    });
    expect((await fetch(`${fleet.apiUrl}/readyz`)).status).toBe(200);
  });

  it.each([
    ["conv", [3, 32, 32]],
    ["ocr-cls", OCR_DIMS],
  ] as const)("%s: JSON jobs, batched by the workers, equal direct onnxruntime runs", async (model, dims) => {
    const sizes = [1, 3, 2];
    const per = dims.reduce((a, b) => a * b, 1);
    const xs = sizes.map((n, i) => randomInput(n * per, 31 + i));
    const subs = await Promise.all(
      xs.map((x, i) => fleet.request("POST", "/v1/jobs", jsonJob(model, [sizes[i] as number, ...dims], x))),
    );
    for (const s of subs) expect(s.status, JSON.stringify(s.json)).toBe(202);
    const views = await Promise.all(subs.map((s) => finalView(s.json.id)));
    for (const [i, v] of views.entries())
      await expectDirect(model, v, xs[i] as Float32Array, [sizes[i] as number, ...dims]);
  });

  it("a binary (KServe v2) job equals a direct run", async () => {
    const n = 2;
    const x = randomInput(n * OCR_DIMS.reduce((a, b) => a * b, 1), 7);
    const head = Buffer.from(
      JSON.stringify({
        model: "ocr-cls",
        inputs: [
          { name: "x", datatype: "FP32", shape: [n, ...OCR_DIMS], parameters: { binary_data_size: x.byteLength } },
        ],
      }),
    );
    const res = await fetch(`${fleet.apiUrl}/v1/jobs`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${fleet.apiKey}`,
        "content-type": "application/octet-stream",
        "inference-header-content-length": String(head.length),
      },
      body: Buffer.concat([head, Buffer.from(x.buffer, x.byteOffset, x.byteLength)]),
    });
    const sub = (await res.json()) as Loose;
    expect(res.status, JSON.stringify(sub)).toBe(202);
    await expectDirect("ocr-cls", await finalView(sub.id), x, [n, ...OCR_DIMS]);
  });

  it("bulk submit: every item queued and run", async () => {
    const xs = [0, 1, 2].map((i) => randomInput(3 * 32 * 32, 50 + i));
    const r = await fleet.request("POST", "/v1/jobs/bulk", { jobs: xs.map((x) => jsonJob("conv", [1, 3, 32, 32], x)) });
    expect(r.status, JSON.stringify(r.json)).toBe(202);
    const items = r.json.jobs as { index: number; id: string; status: string }[];
    expect(items.map((i) => i.status)).toEqual(["queued", "queued", "queued"]);
    for (const [i, item] of items.entries())
      await expectDirect("conv", await finalView(item.id), xs[i] as Float32Array, [1, 3, 32, 32]);
  });

  it("cancels a queued job", async () => {
    const sub = await fleet.request("POST", "/v1/jobs", jsonJob("parked", [1, 3, 32, 32], randomInput(3072, 9)));
    expect(sub.status, JSON.stringify(sub.json)).toBe(202);
    const del = await fleet.request("DELETE", `/v1/jobs/${sub.json.id}`);
    expect([del.status, del.json]).toEqual([202, { id: sub.json.id, status: "cancelled" }]);
    const view = await fleet.request("GET", `/v1/jobs/${sub.json.id}`);
    expect([view.status, view.json.status]).toEqual([200, "cancelled"]);
  });

  it("a JSONL batch completes, each line equal to a direct run", async () => {
    const line = (i: number) =>
      JSON.stringify({
        custom_id: `req-${i}`,
        body: {
          model: "multi",
          inputs: {
            a: { dtype: "float32", shape: [1, 4], data: [i, i + 0.5, -i, i / 4] },
            b: { dtype: "int64", shape: [1, 1], data: [i % 5] },
          },
        },
      });
    const N = 6;
    const res = await fetch(`${fleet.apiUrl}/v1/batches`, {
      method: "POST",
      headers: { authorization: `Bearer ${fleet.apiKey}`, "content-type": "application/jsonl" },
      body: `${Array.from({ length: N }, (_, k) => line(k + 1)).join("\n")}\n`,
    });
    const batch = (await res.json()) as Loose;
    expect(res.status, JSON.stringify(batch)).toBe(202);
    const done = await pollUntil(
      `batch ${batch.id} to settle`,
      async () => {
        const r = await fleet.request("GET", `/v1/batches/${batch.id}`);
        return r.json.status === "completed" ? r.json : undefined;
      },
      60_000,
      100,
    );
    expect(done.counts).toMatchObject({ total: N, accepted: N, completed: N, failed: 0 });
    const text = await (
      await fetch(`${fleet.apiUrl}/v1/batches/${batch.id}/results`, {
        headers: { authorization: `Bearer ${fleet.apiKey}` },
      })
    ).text();
    const lines = text
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => JSON.parse(l) as Loose);
    expect(lines).toHaveLength(N);
    const multi = sessions.multi as ort.InferenceSession;
    for (const l of lines) {
      const i = Number(String(l.custom_id).slice(4));
      const out = await multi.run({
        a: new ort.Tensor("float32", Float32Array.from([i, i + 0.5, -i, i / 4]), [1, 4]),
        b: new ort.Tensor("int64", BigInt64Array.from([BigInt(i % 5)]), [1, 1]),
      });
      expect(l.status).toBe("completed");
      expect([...decodeF32(l.result.outputs.y.data)]).toEqual([...((out.y as ort.Tensor).data as Float32Array)]);
    }
  });

  it("spreads queues over the masters: each model's queue, jobs, inputs and outbox on its own slot, on its slot's master", async () => {
    const admin = fleet.redis as Cluster;
    const masters = await masterOfSlot(admin);
    const slotOf = async (key: string) => Number(await admin.cluster("KEYSLOT", key));
    // Models named until every master serves one of their queues (hashing decides where: no luck needed).
    const chosen = new Map<string, string>();
    for (let i = 0; chosen.size < 3 && i < 200; i++) {
      const model = `spread-${i}`;
      const owner = masters(await slotOf(keys.bull(fleet.prefix, model, "wait")));
      if (![...chosen.values()].includes(owner)) chosen.set(model, owner);
    }
    expect(new Set(chosen.values()).size).toBe(3);
    const ids = new Map<string, string>();
    for (const model of chosen.keys()) {
      await fleet.publish(buildConvNet({ seed: 5 }), { name: model, version: "1", spec: {} });
      const r = await fleet.request("POST", "/v1/jobs", jsonJob(model, [1, 3, 32, 32], randomInput(3072, 9)));
      expect(r.status, JSON.stringify(r.json)).toBe(202);
      ids.set(model, r.json.id);
    }
    const tenantSlot = await slotOf(keys.tenantQueuedJobs(fleet.prefix, "acme"));
    for (const [model, owner] of chosen) {
      const id = ids.get(model) as string;
      // Everything a job's settlement writes shares its queue's slot (one script may touch them together).
      const slot = await slotOf(keys.bull(fleet.prefix, model, "wait"));
      for (const key of [
        keys.job(fleet.prefix, model, id),
        keys.inputs(fleet.prefix, model, id),
        keys.outbox(fleet.prefix, model),
        keys.cancelled(fleet.prefix, id),
      ]) {
        expect(await slotOf(key), key).toBe(slot);
      }
      expect(slot).not.toBe(tenantSlot);
      // Read on that master alone (a plain client, no redirects): the job waits there.
      const node = new Redis(Number(owner.split(":")[1]), "127.0.0.1", { lazyConnect: true });
      try {
        await node.connect();
        expect(await node.zrange(keys.bull(fleet.prefix, model, "prioritized"), 0, -1)).toEqual([id]);
        expect(await node.exists(keys.inputs(fleet.prefix, model, id))).toBe(1);
      } finally {
        node.disconnect();
      }
      expect((await fleet.request("DELETE", `/v1/jobs/${id}`)).json.status).toBe("cancelled");
    }
  });

  it("Bull Board lists the models' queues from the cluster", async () => {
    const auth = `Basic ${Buffer.from("admin:admin-password-for-tests").toString("base64")}`;
    const page = await fetch(`${fleet.apiUrl}/admin/queues`, { headers: { authorization: auth } });
    expect(page.status).toBe(200);
    const api = await fetch(`${fleet.apiUrl}/admin/queues/api/queues`, { headers: { authorization: auth } });
    expect(api.status).toBe(200);
    const names = ((await api.json()) as { queues: { name: string }[] }).queues.map((q) => q.name);
    expect(names).toEqual(expect.arrayContaining([queueName("conv"), queueName("parked")]));
  });

  it("citadel audit verify, run by the CLI against the cluster, accepts the chain", async () => {
    const r = await runCli(["audit", "verify"], {
      cwd: fleet.dir,
      timeout: 60_000,
      env: {
        PATH: process.env.PATH ?? "",
        REDIS_URL: cluster.url,
        CITADEL_PREFIX: fleet.prefix,
        MODEL_STORE_DIR: path.join(fleet.dir, "store"),
        KEY_PROVIDER: "local",
        LOCAL_KEYRING: fleet.env.LOCAL_KEYRING ?? "",
      },
    });
    expect(r.code, `${r.out}\n${r.err}`).toBe(0);
    expect(r.out).toMatch(/^[1-9]\d* records from [1-9]\d* writers: chain intact$/m);
  });

  it("an API on a cluster answers 503 (not 500) while the cluster is down, and is ready again once it is back", async () => {
    // Its own cluster and API process: after an outage an in-process BullMQ close may
    // wait on Redis (bounded, but slow), and the fleet above must close cleanly.
    const own = await startRedisCluster();
    const dir = mkdtempSync(path.join(os.tmpdir(), "citadel-cluster-api-"));
    const port = await freePort();
    let api: FleetProcess | undefined;
    try {
      const tenants = redisClient(own.url, () => undefined);
      const key = await (async () => {
        const store = new TenantStore(tenants, fleet.prefix);
        await store.upsert({ id: "acme", models: ["*"] });
        return store.issueKey("acme");
      })();
      await closeRedis(tenants);
      api = await startProcess(
        "api",
        "api",
        {
          NODE_ENV: "test",
          REDIS_URL: own.url,
          CITADEL_PREFIX: fleet.prefix,
          MODEL_STORE_DIR: path.join(dir, "store"),
          KEY_PROVIDER: "local",
          LOCAL_KEYRING: fleet.env.LOCAL_KEYRING ?? "",
          API_HOST: "127.0.0.1",
          API_PORT: String(port),
          METRICS_HOST: "127.0.0.1",
          METRICS_PORT: String(await freePort()),
        },
        dir,
        `http://127.0.0.1:${port}/readyz`,
      );
      const url = `http://127.0.0.1:${port}`;
      const submit = async () =>
        (
          await fetch(`${url}/v1/jobs`, {
            method: "POST",
            headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
            body: JSON.stringify(jsonJob("conv", [1, 3, 32, 32], randomInput(3072, 1))),
          })
        ).status;
      // Up: the tenant is known, the model is not published on this cluster.
      expect(await submit()).toBe(404);
      await own.down();
      const seen: number[] = [];
      await pollUntil(
        "the API to answer 503",
        async () => {
          const status = await submit();
          seen.push(status);
          return status === 503 ? status : undefined;
        },
        30_000,
        200,
      );
      // Before the clients notice, a request may still get its 404; never a 500.
      expect(
        seen.filter((s) => s !== 404 && s !== 503),
        `statuses seen: ${seen.join(",")}`,
      ).toEqual([]);
      expect((await fetch(`${url}/readyz`)).status).toBe(503);
      // Back (empty: no persistence): the clients reconnect and /readyz answers 200 again.
      await own.restart();
      await pollUntil(
        "/readyz to answer 200 again",
        async () => ((await fetch(`${url}/readyz`)).status === 200 ? true : undefined),
        60_000,
        200,
      );
    } finally {
      await api?.stop("SIGKILL");
      await own.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
