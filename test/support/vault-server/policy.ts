/**
 * Vault ACL policies for the test server: a parser for the HCL subset Citadel's policy
 * files use (`path "…" { capabilities = [...] }`, comments) and Vault's path matching
 * (exact, `+` one segment, trailing `*` prefix glob) with its documented priority rules.
 */

export const CAPABILITIES = ["create", "read", "update", "patch", "delete", "list", "sudo", "deny"] as const;
export type Capability = (typeof CAPABILITIES)[number];

export interface PolicyRule {
  path: string;
  capabilities: Capability[];
}

export class PolicyParseError extends Error {
  override readonly name = "PolicyParseError";
}

/** Vault's built-in `default` policy, reduced to the token paths Citadel uses. */
export const DEFAULT_POLICY_HCL = `
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/revoke-self" {
  capabilities = ["update"]
}
path "sys/capabilities-self" {
  capabilities = ["update"]
}
`;

type Token =
  | { kind: "string"; value: string }
  | { kind: "ident"; value: string }
  | { kind: "punct"; value: "{" | "}" | "[" | "]" | "=" | "," };

function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i] ?? "";
    if (/\s/.test(c)) {
      i++;
    } else if (c === "#" || (c === "/" && text[i + 1] === "/")) {
      while (i < text.length && text[i] !== "\n") i++;
    } else if (c === "/" && text[i + 1] === "*") {
      const end = text.indexOf("*/", i + 2);
      if (end < 0) throw new PolicyParseError("unterminated comment");
      i = end + 2;
    } else if (c === '"') {
      let value = "";
      i++;
      while (i < text.length && text[i] !== '"') {
        if (text[i] === "\\") i++;
        value += text[i] ?? "";
        i++;
      }
      if (i >= text.length) throw new PolicyParseError("unterminated string");
      i++;
      tokens.push({ kind: "string", value });
    } else if (c === "{" || c === "}" || c === "[" || c === "]" || c === "=" || c === ",") {
      tokens.push({ kind: "punct", value: c });
      i++;
    } else if (/[A-Za-z_]/.test(c)) {
      let value = "";
      while (i < text.length && /[A-Za-z0-9_-]/.test(text[i] ?? "")) value += text[i++];
      tokens.push({ kind: "ident", value });
    } else {
      throw new PolicyParseError(`unexpected character ${JSON.stringify(c)} at offset ${i}`);
    }
  }
  return tokens;
}

export function parsePolicy(text: string): PolicyRule[] {
  const tokens = tokenize(text);
  let pos = 0;
  const next = (): Token => {
    const t = tokens[pos++];
    if (!t) throw new PolicyParseError("unexpected end of policy");
    return t;
  };
  const expect = (kind: Token["kind"], value?: string): Token => {
    const t = next();
    if (t.kind !== kind || (value !== undefined && t.value !== value)) {
      throw new PolicyParseError(`expected ${value ?? kind}, got ${JSON.stringify(t.value)}`);
    }
    return t;
  };
  const rules: PolicyRule[] = [];
  while (pos < tokens.length) {
    expect("ident", "path");
    const path = expect("string").value.replace(/^\//, "");
    expect("punct", "{");
    const capabilities: Capability[] = [];
    while (tokens[pos]?.value !== "}") {
      const attr = expect("ident").value;
      if (attr !== "capabilities") throw new PolicyParseError(`unsupported attribute ${attr} in path "${path}"`);
      expect("punct", "=");
      expect("punct", "[");
      while (tokens[pos]?.value !== "]") {
        const cap = expect("string").value;
        if (!(CAPABILITIES as readonly string[]).includes(cap)) {
          throw new PolicyParseError(`invalid capability ${JSON.stringify(cap)} in path "${path}"`);
        }
        capabilities.push(cap as Capability);
        if (tokens[pos]?.value === ",") pos++;
      }
      expect("punct", "]");
    }
    expect("punct", "}");
    rules.push({ path, capabilities });
  }
  return rules;
}

interface CompiledRule {
  pattern: string;
  regex: RegExp;
  capabilities: Set<Capability>;
  firstWildcard: number;
  endsInGlob: boolean;
  plusCount: number;
}

function compile(pattern: string, capabilities: Set<Capability>): CompiledRule {
  const endsInGlob = pattern.endsWith("*");
  const body = endsInGlob ? pattern.slice(0, -1) : pattern;
  const source = body
    .split("/")
    .map((segment) => (segment === "+" ? "[^/]+" : segment.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")))
    .join("/");
  const segments = pattern.split("/");
  const plusIndex = segments.indexOf("+");
  const plusOffset = plusIndex <= 0 ? plusIndex : segments.slice(0, plusIndex).join("/").length + 1;
  const globOffset = endsInGlob ? pattern.length - 1 : -1;
  const candidates = [plusOffset, globOffset].filter((n) => n >= 0);
  return {
    pattern,
    regex: new RegExp(`^${source}${endsInGlob ? ".*" : ""}$`),
    capabilities,
    firstWildcard: candidates.length > 0 ? Math.min(...candidates) : Number.POSITIVE_INFINITY,
    endsInGlob,
    plusCount: segments.filter((s) => s === "+").length,
  };
}

/** Vault's documented priority: true when `a` is lower priority than `b`. */
function lowerPriority(a: CompiledRule, b: CompiledRule): boolean {
  if (a.firstWildcard !== b.firstWildcard) return a.firstWildcard < b.firstWildcard;
  if (a.endsInGlob !== b.endsInGlob) return a.endsInGlob;
  if (a.plusCount !== b.plusCount) return a.plusCount > b.plusCount;
  if (a.pattern.length !== b.pattern.length) return a.pattern.length < b.pattern.length;
  return a.pattern < b.pattern;
}

/** The merged ACL of a token's policies. */
export class Acl {
  private readonly rules: CompiledRule[];
  readonly root: boolean;

  constructor(policies: PolicyRule[][], root = false) {
    this.root = root;
    const merged = new Map<string, Set<Capability>>();
    for (const rule of policies.flat()) {
      const caps = merged.get(rule.path) ?? new Set<Capability>();
      for (const cap of rule.capabilities) caps.add(cap);
      merged.set(rule.path, caps);
    }
    this.rules = [...merged].map(([pattern, caps]) => compile(pattern, caps));
  }

  /** The capabilities granted on `path` (the most specific matching rule wins; deny wins within it). */
  capabilities(path: string): Set<Capability> {
    if (this.root) return new Set(CAPABILITIES.filter((c) => c !== "deny"));
    let best: CompiledRule | undefined;
    for (const rule of this.rules) {
      if (!rule.regex.test(path)) continue;
      if (!best || lowerPriority(best, rule)) best = rule;
    }
    if (!best || best.capabilities.has("deny")) return new Set();
    return best.capabilities;
  }

  allows(path: string, capability: Capability, needsSudo = false): boolean {
    if (this.root) return true;
    const caps = this.capabilities(path);
    return caps.has(capability) && (!needsSudo || caps.has("sudo"));
  }
}
