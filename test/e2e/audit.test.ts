import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { AuditKey, readAuditEntries, verifyAuditStream } from "@citadel/audit";
import { buildConvNet } from "@citadel/onnx";
import { deploymentKeyPattern } from "@citadel/queue";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { b64, startTestFleet, type TestFleet } from "../support/fleet.js";

// The API and the worker each MAC their records with their own role's key, read from a
// file; a verifier told which key belongs to which role accepts exactly that.

let fleet: TestFleet;
const secrets = { api: randomBytes(32), worker: randomBytes(32) };
const key = (role: keyof typeof secrets, as?: string) => new AuditKey(secrets[role], as);

beforeAll(async () => {
  fleet = await startTestFleet({
    workers: 0,
    beforeStart: (dir) => {
      for (const [role, secret] of Object.entries(secrets))
        writeFileSync(path.join(dir, `${role}.key`), `${secret.toString("base64")}\n`, { mode: 0o600 });
      return { AUDIT_KEY_FILE: path.join(dir, "api.key") };
    },
  });
  await fleet.startWorker({ AUDIT_KEY_FILE: path.join(fleet.dir, "worker.key") });
  await fleet.publish(buildConvNet({ seed: 7 }), { name: "keyed", version: "1", spec: {} });
  for (let i = 0; i < 3; i++) {
    const sub = await fleet.request("POST", "/v1/jobs", {
      model: "keyed",
      inputs: { x: { dtype: "float32", shape: [1, 3, 32, 32], data: b64(new Float32Array(3072).fill(i / 10)) } },
    });
    expect(sub.status).toBe(202);
    const done = await fleet.request("GET", `/v1/jobs/${sub.json.id}?wait=20000`);
    expect(done.json.status).toBe("completed");
  }
  // Stop the writers so every record is in the stream.
  await fleet.workers[0]?.close();
  await fleet.api.close();
});
afterAll(async () => {
  await fleet?.close();
});

describe("audit keys per role", () => {
  it("verifies records of the API and the worker, each with its own role's key", async () => {
    const r = await verifyAuditStream(fleet.redis, fleet.prefix, [key("api", "api"), key("worker", "worker")]);
    expect(r.problems).toEqual([]);
    expect(r.writers).toBe(2);
    const events = (await readAuditEntries(fleet.redis, fleet.prefix)).map(
      (e) => e.rec as { writer: string; kid: string; event: string },
    );
    const kids = (prefix: string) => new Set(events.filter((e) => e.writer.startsWith(prefix)).map((e) => e.kid));
    expect(kids("api:")).toEqual(new Set([key("api").kid]));
    expect(events.some((e) => e.writer.startsWith("worker:") && e.event === "job.completed")).toBe(true);
  });

  it("reports records whose key belongs to another role, or to no role it was given", async () => {
    const swapped = await verifyAuditStream(fleet.redis, fleet.prefix, [key("api", "worker"), key("worker", "api")]);
    expect(swapped.ok).toBe(false);
    expect(swapped.problems.join("\n")).toMatch(/api:\S+#1 is keyed with the worker key but is not a worker writer/);
    const apiOnly = await verifyAuditStream(fleet.redis, fleet.prefix, [key("api", "api")]);
    expect(apiOnly.problems.join("\n")).toMatch(/worker:\S+#1 is keyed with an unknown key/);
  });

  it("never writes an audit key to a log line or to Redis", async () => {
    const forms = Object.values(secrets).flatMap((s) => [s.toString("base64"), s.toString("hex")]);
    const logs = fleet.logs.text;
    expect(logs).toContain('"event":"job.completed"');
    for (const f of forms) expect(logs.includes(f)).toBe(false);
    let cursor = "0";
    do {
      const [next, keys] = await fleet.redis.scan(cursor, "MATCH", deploymentKeyPattern(fleet.prefix), "COUNT", 1000);
      cursor = next;
      for (const k of keys) {
        const value = await stringsIn(k);
        for (const f of forms) expect(value.includes(f), k).toBe(false);
      }
    } while (cursor !== "0");
  });
});

/** Every string a key holds, whatever its type, joined. */
async function stringsIn(k: string): Promise<string> {
  const r = fleet.redis;
  switch (await r.type(k)) {
    case "string":
      return (await r.get(k)) ?? "";
    case "hash":
      return JSON.stringify(await r.hgetall(k));
    case "list":
      return JSON.stringify(await r.lrange(k, 0, -1));
    case "set":
      return JSON.stringify(await r.smembers(k));
    case "zset":
      return JSON.stringify(await r.zrange(k, 0, -1));
    case "stream":
      return JSON.stringify(await r.xrange(k, "-", "+"));
    default:
      return "";
  }
}
