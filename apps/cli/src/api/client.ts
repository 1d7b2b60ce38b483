import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { CitadelClient, type RetryOptions } from "@citadel/client";

/** Where the API is and the tenant key to use. */
export interface ApiTarget {
  url: string;
  key: string;
}

/** The state `citadel demo --serve` leaves for other tools, in the working directory. */
const DEMO_STATE = path.join(".citadel", "demo.json");

/**
 * The API address and key: flags first, then CITADEL_API_URL / CITADEL_API_KEY, then a
 * running `citadel demo --serve`'s .citadel/demo.json (so the demo fleet needs no setup).
 */
export function resolveTarget(flags: { api?: string; key?: string }, env: NodeJS.ProcessEnv = process.env): ApiTarget {
  let url = flags.api ?? env.CITADEL_API_URL;
  let key = flags.key ?? env.CITADEL_API_KEY;
  if ((!url || !key) && existsSync(DEMO_STATE)) {
    let demo: { apiUrl?: unknown; apiKey?: unknown } | null;
    try {
      demo = JSON.parse(readFileSync(DEMO_STATE, "utf8")) as typeof demo;
    } catch (err) {
      throw new Error(`${DEMO_STATE}: ${err instanceof Error ? err.message : "unreadable"}`, { cause: err });
    }
    if (!url && typeof demo?.apiUrl === "string") url = demo.apiUrl;
    if (!key && typeof demo?.apiKey === "string") key = demo.apiKey;
  }
  if (!url) throw new Error("no API address: pass --api <url> or set CITADEL_API_URL");
  if (!key) throw new Error("no API key: pass --key <key> or set CITADEL_API_KEY");
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`the API address '${url}' is not a URL (e.g. http://127.0.0.1:8080)`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:")
    throw new Error(`the API address '${url}' is not an http(s) URL (e.g. http://127.0.0.1:8080)`);
  return { url: url.replace(/\/+$/, ""), key };
}

/**
 * The API's client for a target: @citadel/client, JSON as the API answers it (the CLI
 * prints views as they are). No retries unless asked: a person sees a refusal at once.
 */
export function clientFor(target: ApiTarget, retry: RetryOptions | false = false): CitadelClient {
  return new CitadelClient({ baseUrl: target.url, apiKey: target.key, retry });
}
