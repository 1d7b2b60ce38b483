import { request } from "node:http";
import v8 from "node:v8";
import vm from "node:vm";
import { buildIdentityModel } from "@citadel/onnx";
import { afterAll, beforeAll, expect, it } from "vitest";
import { pollUntil, publishModel, queueCounts } from "../support/api-kit.js";
import { startTestFleet, type TestFleet } from "../support/fleet.js";

// A request that waits for its result (POST /v1/jobs?wait, /v2 infer) holds no copy of
// its tensors once the job is stored: N clients waiting on 2 MB bodies cost the API
// what N small requests cost, not N × 2 MB. The API runs in this process, so its
// buffers show in this process's `arrayBuffers` after a full GC.

v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;

const MODEL = "lp-big";
const ROWS = 512;
const COLS = 1024;
const BYTES = ROWS * COLS * 4; // 2 MiB per job
const WAITING = 16;

let fleet: TestFleet;

beforeAll(async () => {
  // No workers: every job stays queued, so every wait stays open.
  fleet = await startTestFleet({ workers: 0, env: { MAX_WAIT_MS: "60000" } });
  await publishModel(fleet, buildIdentityModel("float32", ["N", ROWS, COLS]), {
    name: MODEL,
    version: "1",
    spec: { maxBatch: 1, inputs: { x: { range: [-1, 1] } } },
  });
});
afterAll(async () => {
  await fleet?.close();
});

/** One body the test keeps (counted in the baseline), sent by every request. */
function binaryBody(header: unknown, data: Buffer): { body: Buffer; headerLength: number } {
  const head = Buffer.from(JSON.stringify(header), "utf8");
  return { body: Buffer.concat([head, data]), headerLength: head.length };
}

const tensor = { name: "x", datatype: "FP32", shape: [1, ROWS, COLS], parameters: { binary_data_size: BYTES } };
const v1 = binaryBody({ model: MODEL, inputs: [tensor] }, Buffer.alloc(BYTES));
const v2 = binaryBody({ inputs: [tensor] }, Buffer.alloc(BYTES));

function arrayBuffersAfterGc(): number {
  gc();
  gc();
  return process.memoryUsage().arrayBuffers;
}

it(`holds no request body while ${WAITING} submits wait for their results (POST /v1/jobs?wait and /v2 infer)`, async () => {
  // node:http writes the one body as it is; fetch would copy it per request and keep the copies.
  const send = (url: string, b: { body: Buffer; headerLength: number }, signal: AbortSignal) =>
    new Promise<number | undefined>((resolve) => {
      const req = request(`${fleet.apiUrl}${url}`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${fleet.apiKey}`,
          "content-type": "application/octet-stream",
          "content-length": b.body.length,
          "inference-header-content-length": b.headerLength,
        },
        signal,
      });
      req.on("response", (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode));
      });
      req.on("error", () => resolve(undefined));
      req.end(b.body);
    });
  // One submit first, answered 202 at once: every path has run before the baseline.
  expect(await send("/v1/jobs", v1, new AbortController().signal)).toBe(202);
  const before = arrayBuffersAfterGc();

  const abort = new AbortController();
  const pending = Array.from({ length: WAITING }, (_, i) =>
    i % 2 === 0 ? send("/v1/jobs?wait=60000", v1, abort.signal) : send(`/v2/models/${MODEL}/infer`, v2, abort.signal),
  );
  try {
    // Every job is stored (so every body was read, validated and written) and its request waits.
    await pollUntil("every job queued", async () => (await queueCounts(fleet, MODEL)).queued === WAITING + 1, 30_000);
    // A job is in Redis a moment before its handler resumes and drops the body, so the
    // last few may still hold theirs: measure until they settle. Holding the bodies would
    // be WAITING × 2 MiB (32 MiB) for good; allow a few MiB of sockets and pools.
    const limit = 6 * 2 ** 20;
    let held = Number.POSITIVE_INFINITY;
    await pollUntil(
      "the waiting requests hold no bodies",
      async () => {
        held = arrayBuffersAfterGc() - before;
        return held < limit;
      },
      10_000,
      100,
    ).catch(() => undefined);
    expect(held).toBeLessThan(limit);
  } finally {
    abort.abort();
    await Promise.all(pending);
  }
});
