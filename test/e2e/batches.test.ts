import { buildMultiInputModel } from "@citadel/onnx";
import { keys } from "@citadel/queue";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inlineRefs, pollUntil, publishModel, queueCounts, readAudit } from "../support/api-kit.js";
import { decodeF32, type Loose, startTestFleet, type TestFleet } from "../support/fleet.js";

// docs/api.md "Batches": a JSONL file streamed in, each line a job through the submit path,
// outcomes kept per line for the batch's own retention (BATCH_TTL_MS), not the jobs' RESULT_TTL_MS.

const RESULT_TTL_MS = 1000;
const BATCH_MAX_BYTES = 64 * 1024;
let fleet: TestFleet;
let session: ort.InferenceSession;

beforeAll(async () => {
  fleet = await startTestFleet({
    workers: 1,
    env: {
      RESULT_TTL_MS: String(RESULT_TTL_MS),
      QUEUE_TTL_MS: "60000",
      BATCH_TTL_MS: String(15 * 60_000),
      BATCH_MAX_BYTES: String(BATCH_MAX_BYTES),
    },
  });
  await publishModel(fleet, buildMultiInputModel(), { name: "multi", version: "1", spec: { maxBatch: 8 } });
  session = await ort.InferenceSession.create(buildMultiInputModel());
});
afterAll(async () => {
  await fleet?.close();
});

/** One request line: `a` is 4 values from i, `b` is i mod 5. */
function line(i: number): string {
  const a = [i, i + 0.5, -i, i / 4];
  return JSON.stringify({
    custom_id: `req-${i}`,
    method: "POST",
    url: "/v1/jobs",
    body: {
      model: "multi",
      inputs: {
        a: { dtype: "float32", shape: [1, 4], data: a },
        b: { dtype: "int64", shape: [1, 1], data: [i % 5] },
      },
    },
  });
}

async function direct(i: number): Promise<number[]> {
  const a = Float32Array.from([i, i + 0.5, -i, i / 4]);
  const out = await session.run({
    a: new ort.Tensor("float32", a, [1, 4]),
    b: new ort.Tensor("int64", BigInt64Array.from([BigInt(i % 5)]), [1, 1]),
  });
  return [...((out.y as ort.Tensor).data as Float32Array)];
}

async function postBatch(
  body: string | ReadableStream<Uint8Array>,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: Loose }> {
  const res = await fetch(`${fleet.apiUrl}/v1/batches`, {
    method: "POST",
    headers: { authorization: `Bearer ${fleet.apiKey}`, "content-type": "application/jsonl", ...headers },
    body,
    ...(typeof body === "string" ? {} : { duplex: "half" }),
  } as RequestInit);
  return { status: res.status, json: (await res.json()) as Loose };
}

async function results(
  id: string,
  key = fleet.apiKey,
): Promise<{ status: number; type: string | null; lines: Loose[] }> {
  const res = await fetch(`${fleet.apiUrl}/v1/batches/${id}/results`, { headers: { authorization: `Bearer ${key}` } });
  const text = await res.text();
  const lines =
    res.status === 200
      ? text
          .split("\n")
          .filter((l) => l !== "")
          .map((l) => JSON.parse(l) as Loose)
      : [];
  return { status: res.status, type: res.headers.get("content-type"), lines };
}

const settled = (id: string) =>
  pollUntil(
    `batch ${id} to settle`,
    async () => {
      const r = await fleet.request("GET", `/v1/batches/${id}`);
      return ["completed", "cancelled", "expired"].includes(r.json.status) ? r.json : undefined;
    },
    60_000,
    100,
  );

describe("a batch of 50 lines, two of them malformed", () => {
  let batchId: string;
  const N = 50;
  // Line 7 is not JSON; line 20 names an unknown input (the model's manifest refuses it).
  const file = Array.from({ length: N }, (_, k) => {
    const i = k + 1;
    if (i === 7) return '{"custom_id":"req-7","body":{"model":';
    if (i === 20) return JSON.stringify({ custom_id: "req-20", body: { model: "multi", inputs: {} } });
    return line(i);
  }).join("\n");

  it("answers 202 with the batch's id and counts; each malformed line is refused alone", async () => {
    const r = await postBatch(`${file}\n`);
    expect(r.status, JSON.stringify(r.json)).toBe(202);
    expect(r.json).toMatchObject({
      id: expect.stringMatching(/^batch_/),
      object: "batch",
      counts: { total: N, accepted: N - 2, refused: 2 },
    });
    expect(["in_progress", "completed"]).toContain(r.json.status);
    batchId = r.json.id;
  });

  it("completes, and its counts add up", async () => {
    const done = await settled(batchId);
    expect(done).toMatchObject({
      status: "completed",
      counts: { total: N, accepted: N - 2, refused: 2, completed: N - 2, failed: 0, cancelled: 0 },
    });
  });

  it("streams one result line per request line, keyed by custom_id, equal to onnxruntime's own run", async () => {
    const r = await results(batchId);
    expect(r.status).toBe(200);
    expect(r.type).toMatch(/^application\/jsonl/);
    expect(r.lines.map((l) => l.line)).toEqual(Array.from({ length: N }, (_, k) => k + 1));
    const byId = new Map(r.lines.map((l) => [l.custom_id as string, l]));
    // Line 7 is not JSON: it has no custom_id to be keyed by, only its line number.
    expect(r.lines[6]).toEqual({
      line: 7,
      status: "refused",
      error: { code: "MALFORMED_JSON", message: expect.any(String) },
    });
    expect(byId.get("req-20")).toMatchObject({ line: 20, status: "refused", error: { code: "INPUT_MISSING" } });
    for (let i = 1; i <= N; i++) {
      if (i === 7 || i === 20) continue;
      const l = byId.get(`req-${i}`);
      expect(l, `req-${i}`).toMatchObject({ line: i, status: "completed", id: expect.stringMatching(/^multi\./) });
      expect(l.result.outputs.y.shape).toEqual([1, 4]);
      expect([...decodeF32(l.result.outputs.y.data)]).toEqual(await direct(i));
      // The fleet's internals (worker id, artifact hash) stay out of a tenant's results.
      expect(l.result.workerId).toBeUndefined();
    }
  });

  it("puts every line through the submit path: accepted jobs audited, refused lines recorded", async () => {
    const audit = await readAudit(fleet);
    const r = await results(batchId);
    const ids = new Set(r.lines.flatMap((l) => (l.id ? [l.id as string] : [])));
    expect(audit.filter((a) => a.event === "job.accepted" && ids.has(a.jobId ?? "")).length).toBe(N - 2);
    expect(
      audit.some(
        (a) =>
          a.event === "job.rejected" &&
          /INPUT_MISSING/.test(a.errorCode ?? "") &&
          /MALFORMED_JSON/.test(a.errorCode ?? ""),
      ),
    ).toBe(true);
    // A job of the batch shows its custom_id in its own view too.
    const one = r.lines.find((l) => l.custom_id === "req-3");
    const view = await fleet.request("GET", `/v1/jobs/${one.id}`);
    if (view.status === 200) expect(view.json.custom_id).toBe("req-3");
  });

  it("is 404 for another tenant: its status, results and cancel", async () => {
    const key = await fleet.addTenant({ id: "other", models: ["*"] });
    const auth = { authorization: `Bearer ${key}` };
    for (const [method, url] of [
      ["GET", `/v1/batches/${batchId}`],
      ["DELETE", `/v1/batches/${batchId}`],
    ] as const) {
      const r = await fleet.request(method, url, undefined, auth);
      expect([r.status, r.json.error?.code], `${method} ${url}`).toEqual([404, "BATCH_NOT_FOUND"]);
    }
    expect((await results(batchId, key)).status).toBe(404);
    expect((await fleet.request("GET", "/v1/batches/batch_nosuchbatch000000000000")).status).toBe(404);
  });

  it("keeps its results after the jobs' own RESULT_TTL_MS has removed them", async () => {
    const r = await results(batchId);
    const first = r.lines.find((l) => l.custom_id === "req-1");
    // BullMQ removes completed jobs older than their age when later jobs complete: run one more, past the TTL.
    await new Promise((res) => setTimeout(res, RESULT_TTL_MS + 1100));
    const later = JSON.parse(line(99)).body;
    await pollUntil(
      "the batch's jobs to be gone from the queue",
      async () => {
        const s = await fleet.request("POST", "/v1/jobs?wait=10000", later);
        expect([200, 202]).toContain(s.status);
        return (await fleet.redis.exists(keys.job(fleet.prefix, "multi", first.id))) === 0;
      },
      30_000,
      500,
    );
    expect((await fleet.request("GET", `/v1/jobs/${first.id}`)).status).toBe(404);
    const again = await results(batchId);
    expect(again.lines).toEqual(r.lines);
    expect((await fleet.request("GET", `/v1/batches/${batchId}`)).json.status).toBe("completed");
  });
});

describe("the batch file's bounds", () => {
  it("refuses a file over BATCH_MAX_BYTES with 413 while it streams, and cancels what it had queued", async () => {
    const before = await queueCounts(fleet, "multi");
    let sent = 0;
    let n = 0;
    // No content-length: the bound is found while reading, not from a header.
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent > 64 * 1024 * 1024) return c.close();
        n++;
        const bytes = new TextEncoder().encode(`${line(1000 + n)}\n`);
        sent += bytes.length;
        c.enqueue(bytes);
      },
    });
    const r = await postBatch(stream);
    expect([r.status, r.json.error?.code]).toEqual([413, "PAYLOAD_TOO_LARGE"]);
    const id = r.json.error.details?.batch as string;
    expect(id).toMatch(/^batch_/);
    // The lines it queued before the bound (how many depends on how the body's chunks
    // arrived: none at all when the bound came first) are cancelled, or finished had a
    // worker taken them first; every one is accounted for.
    const done = await settled(id);
    expect(done.status).toBe("cancelled");
    expect(done.counts.completed + done.counts.cancelled + done.counts.failed).toBe(done.counts.accepted);
    // It stopped reading: the client never had to produce the whole (64 MiB) stream.
    expect(sent).toBeLessThan(16 * 1024 * 1024);
    expect((await queueCounts(fleet, "multi")).queued).toBe(before.queued);
  });

  it("reads a gzip file (Content-Encoding), the bound holding for the bytes inflated", async () => {
    const { gzipSync } = await import("node:zlib");
    const small = Array.from({ length: 5 }, (_, k) => line(2000 + k)).join("\n");
    const body = gzipSync(`${small}\n`);
    const post = (payload: Buffer) =>
      fetch(`${fleet.apiUrl}/v1/batches`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${fleet.apiKey}`,
          "content-type": "application/jsonl",
          "content-encoding": "gzip",
        },
        body: payload,
      }).then(async (res) => ({ status: res.status, json: (await res.json()) as Loose }));
    const ok = await post(body);
    expect(ok.status, JSON.stringify(ok.json)).toBe(202);
    expect(ok.json.counts).toMatchObject({ total: 5, accepted: 5, refused: 0 });
    expect((await settled(ok.json.id)).status).toBe("completed");
    // Blank lines inflating past BATCH_MAX_BYTES, from a few hundred bytes sent.
    const bomb = gzipSync(Buffer.concat([Buffer.from(`${line(3000)}\n`), Buffer.alloc(4 * BATCH_MAX_BYTES, 0x0a)]));
    expect(bomb.length).toBeLessThan(BATCH_MAX_BYTES / 16);
    const r = await post(bomb);
    expect([r.status, r.json.error?.code]).toEqual([413, "PAYLOAD_TOO_LARGE"]);
    expect(r.json.error.details).toMatchObject({ limit: BATCH_MAX_BYTES, batch: expect.stringMatching(/^batch_/) });
  });

  it("refuses a declared length over the bound before reading, and other media types with 415", async () => {
    const big = `${line(1)}\n`.repeat(Math.ceil((BATCH_MAX_BYTES + 10) / (line(1).length + 1)));
    const r = await postBatch(big);
    expect([r.status, r.json.error?.code]).toEqual([413, "PAYLOAD_TOO_LARGE"]);
    for (const type of ["text/csv", "application/json"]) {
      const t = await postBatch(line(1), { "content-type": type });
      expect([t.status, t.json.error?.code], type).toEqual([415, "UNSUPPORTED_MEDIA_TYPE"]);
    }
  });
});

describe("cancelling a batch no worker has started", () => {
  it("removes its queued jobs; the batch ends cancelled with every line counted", async () => {
    await Promise.all(fleet.workers.splice(0).map((w) => w.close()));
    const file = Array.from({ length: 12 }, (_, k) => line(200 + k)).join("\n");
    const r = await postBatch(file, { "content-type": "application/x-ndjson" });
    expect(r.status, JSON.stringify(r.json)).toBe(202);
    expect(r.json).toMatchObject({ status: "in_progress", counts: { total: 12, accepted: 12, completed: 0 } });
    expect((await queueCounts(fleet, "multi")).queued).toBe(12);

    const c = await fleet.request("DELETE", `/v1/batches/${r.json.id}`);
    expect(c.status).toBe(202);
    expect(c.json).toMatchObject({ status: "cancelled", counts: { total: 12, accepted: 12, cancelled: 12 } });
    expect((await queueCounts(fleet, "multi")).queued).toBe(0);
    const res = await results(r.json.id);
    expect(res.lines).toHaveLength(12);
    for (const l of res.lines) expect(l).toMatchObject({ status: "cancelled", error: { code: "CANCELLED" } });
    // Each job is cancelled in its own view too.
    const view = await fleet.request("GET", `/v1/jobs/${res.lines[0].id}`);
    expect(view.json).toMatchObject({ status: "cancelled", custom_id: "req-200" });
    // A second cancel changes nothing and counts nothing twice.
    const again = await fleet.request("DELETE", `/v1/batches/${r.json.id}`);
    expect(again.json.counts).toEqual(c.json.counts);
  });
});

describe("custom_id and metadata on single jobs", () => {
  it("are returned in the job's view (JSON and binary submits), and bounded", async () => {
    await fleet.startWorker();
    const body = { ...JSON.parse(line(5)).body, custom_id: "mine-1", metadata: { team: "ocr", run: "7" } };
    const s = await fleet.request("POST", "/v1/jobs?wait=20000", body);
    expect(s.status).toBe(200);
    expect(s.json).toMatchObject({ status: "completed", custom_id: "mine-1", metadata: { team: "ocr", run: "7" } });
    const g = await fleet.request("GET", `/v1/jobs/${s.json.id}`);
    expect(g.json).toMatchObject({ custom_id: "mine-1", metadata: { team: "ocr", run: "7" } });

    const header = {
      model: "multi",
      custom_id: "bin-1",
      inputs: [
        { name: "a", datatype: "FP32", shape: [1, 4], parameters: { binary_data_size: 16 } },
        { name: "b", datatype: "INT64", shape: [1, 1], parameters: { binary_data_size: 8 } },
      ],
    };
    const head = Buffer.from(JSON.stringify(header));
    const res = await fetch(`${fleet.apiUrl}/v1/jobs`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${fleet.apiKey}`,
        "content-type": "application/octet-stream",
        "inference-header-content-length": String(head.length),
      },
      body: Buffer.concat([
        head,
        Buffer.from(Float32Array.from([1, 2, 3, 4]).buffer),
        Buffer.from(BigInt64Array.from([1n]).buffer),
      ]),
    });
    expect(res.status).toBe(202);
    const id = ((await res.json()) as Loose).id;
    expect((await fleet.request("GET", `/v1/jobs/${id}`)).json.custom_id).toBe("bin-1");

    for (const bad of [
      { custom_id: "x".repeat(129) },
      { metadata: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, "v"])) },
      { metadata: { k: "v".repeat(257) } },
    ]) {
      const r = await fleet.request("POST", "/v1/jobs", { ...JSON.parse(line(5)).body, ...bad });
      expect([r.status, r.json.error?.code]).toEqual([400, "VALIDATION_FAILED"]);
    }
  });
});

describe("the OpenAPI document", () => {
  it("describes the batch routes, the JSONL bodies and the view", async () => {
    const doc = (await (await fetch(`${fleet.apiUrl}/openapi.json`)).json()) as Loose;
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining(["/v1/batches", "/v1/batches/{id}", "/v1/batches/{id}/results"]),
    );
    expect(Object.keys(doc.paths["/v1/batches/{id}"]).sort()).toEqual(["delete", "get"]);
    const post = doc.paths["/v1/batches"].post;
    expect(Object.keys(post.requestBody.content).sort()).toEqual(["application/jsonl", "application/x-ndjson"]);
    expect(inlineRefs(doc, post.requestBody.content["application/jsonl"].schema["x-jsonl-line"]).required).toEqual(
      expect.arrayContaining(["custom_id", "body"]),
    );
    expect(inlineRefs(doc, post.responses["202"].content["application/json"].schema).properties.counts).toBeDefined();
    expect(Object.keys(doc.paths["/v1/batches/{id}/results"].get.responses["200"].content)).toEqual([
      "application/jsonl",
    ]);
  });
});
