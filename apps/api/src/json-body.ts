import { CitadelError } from "@citadel/contracts";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Parses a request body strictly. JSON.parse alone accepts things we refuse: invalid
 * UTF-8 (replaced silently), duplicate keys (last one wins, so two readers can
 * disagree), unbounded nesting (a JSON bomb recurses deep), and `__proto__` keys
 * (prototype-poisoning bait). One linear scan checks all of these before JSON.parse;
 * hand-written because no maintained JSON parser reports duplicate keys cheaply.
 */
export function parseJsonBody(body: Buffer, maxDepth: number): unknown {
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    throw new CitadelError("MALFORMED_JSON", "request body is not valid UTF-8");
  }
  scan(text, maxDepth);
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new CitadelError("MALFORMED_JSON", `request body is not valid JSON: ${(err as Error).message.slice(0, 120)}`);
  }
}

function scan(text: string, maxDepth: number): void {
  // One Set of keys per open object; null for arrays.
  const stack: (Set<string> | null)[] = [];
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      stack.push(c === 0x7b ? new Set() : null);
      if (stack.length > maxDepth) throw new CitadelError("MALFORMED_JSON", `JSON nesting deeper than ${maxDepth}`);
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x22 /* " */) {
      // Jump to the closing quote with indexOf (native speed: tensor data is one long
      // string); a quote preceded by an odd run of backslashes is escaped.
      const start = i;
      let end = i;
      for (;;) {
        end = text.indexOf('"', end + 1);
        if (end < 0) throw new CitadelError("MALFORMED_JSON", "request body has an unterminated string");
        let k = end - 1;
        while (text.charCodeAt(k) === 0x5c) k--;
        if ((end - 1 - k) % 2 === 0) break;
      }
      i = end;
      const keys = stack[stack.length - 1];
      if (!keys) continue;
      let j = i + 1;
      while (j < n && (text[j] === " " || text[j] === "\n" || text[j] === "\r" || text[j] === "\t")) j++;
      if (text[j] !== ":") continue;
      const raw = text.slice(start, i + 1);
      let key = raw.slice(1, -1);
      if (key.includes("\\")) {
        try {
          key = JSON.parse(raw) as string;
        } catch {
          throw new CitadelError("MALFORMED_JSON", "request body has a malformed string");
        }
      }
      if (key === "__proto__" || key === "constructor" || key === "prototype") {
        throw new CitadelError("MALFORMED_JSON", `forbidden key '${key}'`);
      }
      if (keys.has(key)) throw new CitadelError("MALFORMED_JSON", `duplicate key '${key.slice(0, 64)}'`);
      keys.add(key);
    }
  }
}
