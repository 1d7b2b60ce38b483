import { readFileSync } from "node:fs";
import { freePort } from "@citadel/cli/fleet";
import {
  type BatchInputLine,
  CitadelApiError,
  CitadelClient,
  CitadelConnectionError,
  type Job,
  type JobInput,
  tensor,
} from "@citadel/client";
import { buildMultiInputModel } from "@citadel/onnx";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pollUntil, publishModel } from "../support/api-kit.js";
import { startTestFleet, type TestFleet } from "../support/fleet.js";

// Issue 12 point 4: the TypeScript client (@citadel/client) against a running fleet:
// binary and JSON submits, results equal to onnxruntime's own run, bulk, batches,
// cancel, and refusals as typed errors (429 with its Retry-After included).

let fleet: TestFleet;
let session: ort.InferenceSession;
/** Every request the clients sent: method, path and the headers that choose the wire format. */
const sent: { method: string; path: string; contentType?: string; accept?: string }[] = [];

/** The global fetch, noting each request (the client takes a fetch of its own for this). */
const notingFetch: typeof fetch = (input, init) => {
  const url = new URL(String(input));
  const headers = new Headers(init?.headers);
  sent.push({
    method: init?.method ?? "GET",
    path: `${url.pathname}${url.search}`,
    ...(headers.get("content-type") ? { contentType: headers.get("content-type") as string } : {}),
    ...(headers.get("accept") ? { accept: headers.get("accept") as string } : {}),
  });
  return fetch(input, init);
};

let client: CitadelClient;

beforeAll(async () => {
  // MAX_WAIT_MS stays the default: the served OpenAPI document is then docs/openapi.json.
  fleet = await startTestFleet({ workers: 1, env: { BULK_MAX_JOBS: "16" } });
  await publishModel(fleet, buildMultiInputModel(), { name: "multi", version: "1", spec: { maxBatch: 8 } });
  session = await ort.InferenceSession.create(buildMultiInputModel());
  client = new CitadelClient({ baseUrl: fleet.apiUrl, apiKey: fleet.apiKey, fetch: notingFetch });
});
afterAll(async () => {
  await fleet?.close();
});

/** A job for `multi`: `a` is n rows of 4 values from seed, `b` one int64 per row. */
function multiJob(n: number, seed: number): { job: JobInput; a: Float32Array; b: BigInt64Array } {
  const a = Float32Array.from({ length: n * 4 }, (_, i) => seed + i / 8 - 1.25);
  const b = BigInt64Array.from({ length: n }, (_, i) => BigInt((seed + i) % 5));
  return { job: { model: "multi", inputs: { a: tensor(a, [n, 4]), b: tensor(b, [n, 1]) } }, a, b };
}

async function direct(a: Float32Array, b: BigInt64Array): Promise<{ dims: number[]; data: Float32Array }> {
  const n = b.length;
  const out = await session.run({ a: new ort.Tensor("float32", a, [n, 4]), b: new ort.Tensor("int64", b, [n, 1]) });
  const y = out.y as ort.Tensor;
  return { dims: [...y.dims], data: y.data as Float32Array };
}

/** The job once final: submitAndWait, then waitForJob when the wait ran out first (a loaded machine). */
async function finalJob(job: JobInput, opts: { binary?: boolean } = {}): Promise<Job> {
  const r = await client.submitAndWait(job, { waitMs: 20_000, ...opts });
  return r.final ? r.job : client.waitForJob(r.accepted.id, { timeoutMs: 120_000, ...opts });
}

function expectOutput(job: Job, want: { dims: number[]; data: Float32Array }): void {
  expect(job.status, JSON.stringify(job.error)).toBe("completed");
  const y = job.result?.outputs.y;
  expect(y?.dtype).toBe("float32");
  expect(y?.shape).toEqual(want.dims);
  expect(y?.data).toBeInstanceOf(Float32Array);
  expect(Array.from((y?.data ?? []) as ArrayLike<number>)).toEqual([...want.data]);
}

describe("submit and wait", () => {
  it("sends TypedArrays as a binary body and reads the result as bytes, equal to a direct onnxruntime run", async () => {
    const { job, a, b } = multiJob(3, 1);
    const from = sent.length;
    const done = await finalJob(job);
    expectOutput(done, await direct(a, b));
    expect(done.result?.batchSize).toBe(3);
    const post = sent.slice(from).find((s) => s.method === "POST");
    expect(post).toMatchObject({ path: "/v1/jobs?wait=20000", contentType: "application/octet-stream" });
    expect(post?.accept).toMatch(/^application\/octet-stream/);
  });

  it("sends JSON (tensors as base64) and reads JSON when binary is off, with the same outputs", async () => {
    const { job, a, b } = multiJob(2, 2);
    const from = sent.length;
    const accepted = await client.submit(job, { binary: false });
    expect(accepted).toMatchObject({ status: "queued", model: "multi", version: "1" });
    const done = await client.waitForJob(accepted.id, { timeoutMs: 120_000, binary: false });
    expectOutput(done, await direct(a, b));
    const mine = sent.slice(from);
    expect(mine[0]).toMatchObject({ method: "POST", path: "/v1/jobs", contentType: "application/json" });
    expect(mine.slice(1).every((s) => s.accept === "application/json")).toBe(true);
    // The same job read as bytes decodes to the same values.
    expectOutput(await client.getJob(accepted.id), await direct(a, b));
  });

  it("takes inputs in the API's JSON form too (number arrays), with custom_id and metadata echoed", async () => {
    const done = await finalJob({
      model: "multi",
      inputs: {
        a: { dtype: "float32", shape: [1, 4], data: [1, 2, 3, 4] },
        b: { dtype: "int64", shape: [1, 1], data: [3] },
      },
      custom_id: "mine-1",
      metadata: { team: "ocr" },
    });
    expect(done).toMatchObject({ status: "completed", custom_id: "mine-1", metadata: { team: "ocr" } });
    expect(Array.from((done.result?.outputs.y?.data ?? []) as ArrayLike<number>)).toEqual([4, 5, 6, 7]);
  });

  it("answers a repeated Idempotency-Key with the job it created", async () => {
    const { job } = multiJob(1, 3);
    const first = await client.submit(job, { idempotencyKey: "client-test-key-1" });
    const again = await client.submit(job, { idempotencyKey: "client-test-key-1" });
    expect(again.id).toBe(first.id);
    const other = await client
      .submitAndWait(multiJob(1, 4).job, { waitMs: 0, idempotencyKey: "client-test-key-1" })
      .catch((e: unknown) => e);
    expect(other).toMatchObject({ status: 409, code: "IDEMPOTENCY_CONFLICT" });
  });
});

describe("bulk", () => {
  it("answers each item on its own: one bad item is refused with its code, the others run", async () => {
    const good = [multiJob(1, 5), multiJob(2, 6)];
    const bad: JobInput = {
      model: "multi",
      inputs: { a: tensor(new Float32Array(5), [1, 5]), b: tensor(new BigInt64Array(1), [1, 1]) },
    };
    const items = await client.submitBulk([good[0]?.job as JobInput, bad, good[1]?.job as JobInput]);
    expect(items.map((i) => [i.index, i.ok])).toEqual([
      [0, true],
      [1, false],
      [2, true],
    ]);
    const refused = items[1];
    if (refused?.ok !== false) throw new Error("item 1 was not refused");
    expect(refused.error).toBeInstanceOf(CitadelApiError);
    expect([refused.error.status, refused.error.code]).toEqual([422, "TENSOR_SHAPE_MISMATCH"]);
    for (const k of [0, 2] as const) {
      const item = items[k];
      if (!item?.ok) throw new Error(`item ${k} was refused`);
      const g = good[k === 0 ? 0 : 1] as ReturnType<typeof multiJob>;
      expectOutput(await client.waitForJob(item.job.id, { timeoutMs: 120_000 }), await direct(g.a, g.b));
    }
  });

  it("refuses a JSON item that is not a job request alone (400), as JSON", async () => {
    const from = sent.length;
    const items = await client.submitBulk(
      [multiJob(1, 7).job, { model: "multi", inputs: { a: { dtype: "float8", shape: [1], data: [1] } } } as never],
      { binary: false },
    );
    expect(sent[from]?.contentType).toBe("application/json");
    expect(items[0]?.ok).toBe(true);
    expect(items[1]).toMatchObject({ index: 1, ok: false, error: { status: 400, code: "VALIDATION_FAILED" } });
  });
});

describe("batches", () => {
  it("streams a batch file from an async iterable and reads its results back, outputs decoded", async () => {
    const jobs = Array.from({ length: 12 }, (_, i) => multiJob(1, 10 + i));
    async function* lines(): AsyncGenerator<BatchInputLine> {
      for (const [i, j] of jobs.entries()) yield { custom_id: `req-${i}`, body: j.job };
      yield { custom_id: "bad", body: { model: "multi", inputs: {} } };
    }
    const from = sent.length;
    const created = await client.createBatch(lines());
    expect(sent[from]).toMatchObject({ method: "POST", path: "/v1/batches", contentType: "application/jsonl" });
    expect(created).toMatchObject({ object: "batch", counts: { total: 13, accepted: 12, refused: 1 } });
    const done = await client.waitForBatch(created.id, { timeoutMs: 120_000, pollMs: 200 });
    expect(done.status).toBe("completed");
    expect(done.counts).toMatchObject({ completed: 12, failed: 0 });
    const results = [];
    for await (const line of client.batchResults(created.id)) results.push(line);
    expect(results.map((r) => r.custom_id)).toEqual([...jobs.map((_, i) => `req-${i}`), "bad"]);
    for (const [i, j] of jobs.entries()) {
      const r = results[i];
      expect(r?.status).toBe("completed");
      expect(Array.from((r?.result?.outputs.y?.data ?? []) as ArrayLike<number>)).toEqual([
        ...(await direct(j.a, j.b)).data,
      ]);
    }
    expect(results[12]).toMatchObject({ line: 13, status: "refused", error: { code: "INPUT_MISSING" } });
  });

  it("stops reading results when the loop breaks off", async () => {
    const created = await client.createBatch([0, 1, 2].map((i) => ({ custom_id: `x-${i}`, body: multiJob(1, i).job })));
    let seen = 0;
    for await (const _ of client.batchResults(created.id)) {
      seen++;
      break;
    }
    expect(seen).toBe(1);
    await expect(client.getBatch("batch_nosuchbatch000000000000")).rejects.toMatchObject({
      status: 404,
      code: "BATCH_NOT_FOUND",
    });
  });
});

describe("cancel (no worker running)", () => {
  beforeAll(async () => {
    await Promise.all(fleet.workers.splice(0).map((w) => w.close()));
  });
  afterAll(async () => {
    await fleet.startWorker();
  });

  it("cancels a queued job, which then reads as cancelled", async () => {
    const accepted = await client.submit(multiJob(1, 30).job);
    expect(await client.cancel(accepted.id)).toEqual({ id: accepted.id, status: "cancelled" });
    expect((await client.getJob(accepted.id)).status).toBe("cancelled");
    const waited = await client.submitAndWait(multiJob(1, 31).job, { waitMs: 0 });
    expect(waited.final).toBe(false);
  });

  it("cancels a batch whose jobs have not run", async () => {
    const created = await client.createBatch([0, 1].map((i) => ({ custom_id: `c-${i}`, body: multiJob(1, i).job })));
    const cancelled = await client.cancelBatch(created.id);
    expect(["cancelling", "cancelled"]).toContain(cancelled.status);
    const done = await pollUntil("the batch to be cancelled", async () => {
      const b = await client.getBatch(created.id);
      return b.status === "cancelled" ? b : undefined;
    });
    expect(done.counts).toMatchObject({ accepted: 2, cancelled: 2 });
  });
});

describe("refusals as typed errors", () => {
  it("surfaces a 429 with its Retry-After, and waits it out when retries are on", async () => {
    // One request per 100 s: the second one is refused however slowly the test runs.
    const key = await fleet.addTenant({ id: "slow", models: ["*"], requestRate: 0.01, requestBurst: 1 });
    const strict = new CitadelClient({ baseUrl: fleet.apiUrl, apiKey: key, retry: false });
    await strict.listModels();
    const err = await strict.listModels().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CitadelApiError);
    expect(err).toMatchObject({ status: 429, code: "RATE_LIMITED" });
    expect((err as CitadelApiError).retryAfterMs).toBeGreaterThanOrEqual(1000);
    // A tenant whose bucket refills in a second (a Retry-After the client waits out): calls
    // back to back meet an empty bucket; a slow machine may refill it between two, so it
    // calls until one was refused, and every call must end in the models' list.
    const paced = await fleet.addTenant({ id: "paced", models: ["*"], requestRate: 1, requestBurst: 1 });
    const seen: number[] = [];
    const recording: typeof fetch = async (input, init) => {
      const res = await fetch(input, init);
      seen.push(res.status);
      return res;
    };
    const patient = new CitadelClient({
      baseUrl: fleet.apiUrl,
      apiKey: paced,
      retry: { attempts: 5 },
      fetch: recording,
    });
    for (let i = 0; i < 10 && !seen.includes(429); i++) {
      expect((await patient.listModels()).map((m) => m.name)).toContain("multi");
    }
    expect(seen).toContain(429);
    expect(seen.at(-1)).toBe(200);
  });

  it("says what was wrong: unknown job and model (404), bad key (401), a wait over MAX_WAIT_MS (400)", async () => {
    await expect(client.getJob("multi.doesnotexist")).rejects.toMatchObject({ status: 404, code: "JOB_NOT_FOUND" });
    await expect(client.submit({ ...multiJob(1, 1).job, model: "nope" })).rejects.toMatchObject({
      status: 404,
      code: "MODEL_NOT_FOUND",
    });
    const stranger = new CitadelClient({ baseUrl: fleet.apiUrl, apiKey: "not-a-key" });
    await expect(stranger.getJob("multi.x")).rejects.toMatchObject({ status: 401, code: "UNAUTHORIZED" });
    await expect(client.getJob("multi.x", { waitMs: 30_001 })).rejects.toMatchObject({
      status: 400,
      code: "VALIDATION_FAILED",
    });
  });

  it("names an address that does not answer", async () => {
    const port = await freePort();
    const gone = new CitadelClient({ baseUrl: `http://127.0.0.1:${port}`, apiKey: "k" });
    const err = await gone.getJob("x").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CitadelConnectionError);
    expect((err as Error).message).toBe(`cannot reach the API at http://127.0.0.1:${port}: connection refused`);
  });
});

describe("the OpenAPI document", () => {
  it("served by the fleet is the committed docs/openapi.json", async () => {
    const served = await (await fetch(`${fleet.apiUrl}/openapi.json`)).json();
    const committed = JSON.parse(readFileSync(new URL("../../docs/openapi.json", import.meta.url), "utf8"));
    expect(served).toEqual(committed);
  });
});
