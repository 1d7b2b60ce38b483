import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createLogger } from "./logger.js";

/** A logger whose lines are kept, and what it wrote. */
function capture() {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _encoding, next) {
      lines.push(String(chunk));
      next();
    },
  });
  return { log: createLogger({ name: "t", destination }), text: () => lines.join("") };
}

/** An error as ioredis makes one from an error reply: the command and its arguments attached. */
function replyError(message: string, name: string, args: unknown[]): Error {
  return Object.assign(new Error(message), { name: "ReplyError", command: { name, args } });
}

describe("the logger's error serializer", () => {
  it("keeps a Redis command's name and drops its arguments (an AUTH password, tensor bytes, results), nested errors too", async () => {
    const { log, text } = capture();
    const auth = replyError("WRONGPASS invalid username-password pair", "auth", ["api", "pw-SECRET-1"]);
    const set = replyError("OOM command not allowed", "set", ["{c:q:m}:job:in", Buffer.from("TENSOR-BYTES")]);
    const cluster = Object.assign(new Error("Failed to refresh slots cache."), { lastNodeError: auth });
    const exec = Object.assign(new Error("EXECABORT Transaction discarded"), {
      previousErrors: [set, replyError("ERR", "evalsha", ["sha", '{"callback":"https://x/?token=TOKEN-3"}'])],
    });
    log.error({ err: auth }, "redis error");
    log.error({ err: cluster }, "redis error");
    log.error({ err: exec }, "settle failed");
    log.error({ err: Object.assign(new Error("wrapped"), { cause: set }) }, "wrapped");
    await new Promise((r) => setImmediate(r));
    const out = text();
    for (const secret of [
      "pw-SECRET-1",
      "TENSOR-BYTES",
      "TOKEN-3",
      Buffer.from("TENSOR-BYTES").toJSON().data.join(","),
    ])
      expect(out).not.toContain(secret);
    // What an operator needs stays: the message, the command's name, the nesting.
    expect(out).toContain("WRONGPASS invalid username-password pair");
    expect(out).toContain('"command":{"name":"auth"}');
    expect(out).toContain('"command":{"name":"evalsha"}');
    expect(out).toContain("Failed to refresh slots cache.");
  });
});
