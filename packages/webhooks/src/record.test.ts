import { describe, expect, it } from "vitest";
import { parseNotification } from "./record.js";

describe("parseNotification", () => {
  it("reads the entries the settle scripts write", () => {
    expect(
      parseNotification(["k", "job", "id", "m.abc", "t", "acme", "e", "job.failed", "u", "", "f", "1700000000000"]),
    ).toEqual({ kind: "job", id: "m.abc", tenant: "acme", type: "job.failed", url: undefined, at: 1700000000000 });
    expect(
      parseNotification([
        "k",
        "batch",
        "id",
        "batch_x",
        "t",
        "acme",
        "e",
        "batch.completed",
        "u",
        "https://e.com/",
        "f",
        "5",
      ]),
    ).toMatchObject({ kind: "batch", url: "https://e.com/" });
  });

  it("refuses what is not a notification: unknown kinds or events, an event of another kind, missing fields", () => {
    const base = { k: "job", id: "m.abc", t: "acme", e: "job.completed", u: "", f: "5" };
    const flat = (o: Record<string, string>) => Object.entries(o).flat();
    expect(parseNotification(flat(base))).toBeDefined();
    expect(parseNotification(flat({ ...base, k: "tenant" }))).toBeUndefined();
    expect(parseNotification(flat({ ...base, e: "job.exploded" }))).toBeUndefined();
    expect(parseNotification(flat({ ...base, e: "batch.completed" }))).toBeUndefined();
    expect(parseNotification(flat({ ...base, t: "" }))).toBeUndefined();
    expect(parseNotification(flat({ ...base, f: "soon" }))).toBeUndefined();
  });
});
