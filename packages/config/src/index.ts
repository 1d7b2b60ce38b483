import { existsSync, readFileSync } from "node:fs";
import { z } from "zod";

export * from "./parent.js";

export const SECOND = 1000;
export const MINUTE = 60 * SECOND;

/** "true"/"false"/"1"/"0" only; z.coerce.boolean would read "false" as true. */
export const BoolEnv = z
  .enum(["true", "false", "1", "0", "yes", "no"])
  .transform((v) => v === "true" || v === "1" || v === "yes");

export const IntEnv = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

/** A comma-separated list, trimmed, empties dropped. */
export const ListEnv = z.string().transform((v) =>
  v
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0),
);

const HOST_PORT = /^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$/;

/** host:port, host, or [IPv6]:port, the port 1–65535. */
export function isHostPort(s: string): boolean {
  const m = HOST_PORT.exec(s);
  return m !== null && (m[1] === undefined || (Number(m[1]) > 0 && Number(m[1]) < 65536));
}

/** A single-Redis URL, or a cluster URL whose authority lists its seed nodes. */
export function isRedisUrl(url: string): boolean {
  const c = /^rediss?\+cluster:\/\/(?:[^@/?#]*@)?([^/?#]+)(?:[/?#].*)?$/i.exec(url);
  if (c) return (c[1] as string).split(",").every((n) => isHostPort(n.trim()));
  try {
    const u = new URL(url);
    return (u.protocol === "redis:" || u.protocol === "rediss:") && u.hostname !== "";
  } catch {
    return false;
  }
}

export class ConfigError extends Error {
  override readonly name = "ConfigError";
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
  }
}

/**
 * Parses the environment once at start-up. Every problem is listed, not just the
 * first; values are never echoed (they may be secrets).
 */
export function parseEnv<S extends z.ZodType>(schema: S, env: NodeJS.ProcessEnv = process.env): z.infer<S> {
  const res = schema.safeParse(env);
  if (res.success) return res.data;
  throw new ConfigError(res.error.issues.map((i) => `${i.path.join(".") || "(env)"}: ${i.message}`));
}

/** parseEnv for a process entry point: prints the problems and exits 78 (EX_CONFIG). */
export function loadEnvOrExit<S extends z.ZodType>(
  schema: S,
  app: string,
  env: NodeJS.ProcessEnv = process.env,
): z.infer<S> {
  try {
    return parseEnv(schema, env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${app}: ${err.message}\n`);
      process.exit(78);
    }
    throw err;
  }
}

/** Settings every Citadel process shares. */
export const CommonEnv = z.object({
  NODE_ENV: z.enum(["development", "production", "test"]).default("development"),
  LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  /**
   * One Redis (`redis://`, `rediss://`), or a Redis Cluster: `redis+cluster://user:pass@host:port,host:port`
   * (`rediss+cluster://` for TLS). Never echoed: it may carry a password.
   */
  REDIS_URL: z
    .string()
    .refine(isRedisUrl, "must be a redis://, rediss://, redis+cluster:// or rediss+cluster:// URL")
    .default("redis://127.0.0.1:6379"),
  /**
   * Redis Cluster seed nodes, host:port comma-separated: the processes connect to the
   * cluster, with REDIS_URL's user, password and TLS.
   */
  REDIS_CLUSTER_NODES: ListEnv.refine((nodes) => nodes.length > 0 && nodes.every(isHostPort), {
    message: "must list host:port pairs, comma-separated",
  }).optional(),
  /** BullMQ/Redis key prefix; the braces make it a Redis Cluster hash tag. */
  CITADEL_PREFIX: z.string().min(1).max(64).default("{citadel}"),
  MODEL_STORE_DIR: z.string().min(1).default(".citadel/store"),
});
export type CommonEnv = z.infer<typeof CommonEnv>;

/** Whether Redis Cluster would hash `key` by a hash tag: the text between its first `{` and the next `}`, not empty. */
export function hasHashTag(key: string): boolean {
  const open = key.indexOf("{");
  const close = open < 0 ? -1 : key.indexOf("}", open + 1);
  return close > open + 1;
}

/** Whether the settings name a Redis Cluster (REDIS_CLUSTER_NODES, or a redis+cluster:// URL). */
export function isClusterEnv(env: { REDIS_URL?: unknown; REDIS_CLUSTER_NODES?: unknown }): boolean {
  return env.REDIS_CLUSTER_NODES !== undefined || /^rediss?\+cluster:\/\//.test(String(env.REDIS_URL ?? ""));
}

/**
 * Cross-field rules for CommonEnv; call from the app's superRefine. On a cluster every
 * key must carry the prefix's hash tag: BullMQ's scripts and Citadel's touch several
 * keys at once, which a cluster refuses (CROSSSLOT) unless they share a slot.
 */
export function refineCommonEnv(
  env: { REDIS_URL?: unknown; REDIS_CLUSTER_NODES?: unknown; CITADEL_PREFIX?: unknown },
  ctx: z.RefinementCtx,
): void {
  if (!isClusterEnv(env) || typeof env.CITADEL_PREFIX !== "string" || hasHashTag(env.CITADEL_PREFIX)) return;
  ctx.addIssue({
    code: "custom",
    path: ["CITADEL_PREFIX"],
    message:
      "on a Redis Cluster it must hold a hash tag such as {citadel}: the scripts touch several keys at once, which must share a slot",
  });
}

/** Key service settings shared by the worker and the CLI. */
export const KeyEnv = z.object({
  KEY_PROVIDER: z.enum(["local", "vault"]).default("local"),
  LOCAL_KEYRING: z.string().default(".citadel/keyring.json"),
  /** The local provider refuses NODE_ENV=production unless this is set. */
  ALLOW_LOCAL_KEYS_IN_PRODUCTION: BoolEnv.default(false),
  TRUSTED_SIGNERS: z.string().optional(),
  VAULT_ADDR: z.string().url().optional(),
  VAULT_AUTH: z.enum(["token", "approle", "kubernetes"]).default("token"),
  VAULT_TOKEN: z.string().optional(),
  VAULT_ROLE_ID: z.string().optional(),
  VAULT_SECRET_ID: z.string().optional(),
  VAULT_SECRET_ID_FILE: z.string().optional(),
  VAULT_K8S_ROLE: z.string().optional(),
  VAULT_K8S_MOUNT: z.string().default("kubernetes"),
  VAULT_K8S_JWT_PATH: z.string().default("/var/run/secrets/kubernetes.io/serviceaccount/token"),
  VAULT_TRANSIT_MOUNT: z.string().default("transit"),
  VAULT_MODEL_KEY: z.string().default("citadel-models"),
  VAULT_SIGNING_KEY: z.string().default("citadel-signing"),
});
export type KeyEnv = z.infer<typeof KeyEnv>;

/**
 * Cross-field rules run even when some fields failed to parse, so one start-up lists
 * every problem. They see raw values then, so they only compare and test presence.
 */
export const EVEN_WITH_ISSUES = { when: () => true } as const;

/** Cross-field rules for KeyEnv; call from the app's superRefine (with EVEN_WITH_ISSUES). */
export function refineKeyEnv(env: KeyEnv & { NODE_ENV: string }, ctx: z.RefinementCtx): void {
  if (env.KEY_PROVIDER === "local" && env.NODE_ENV === "production" && !env.ALLOW_LOCAL_KEYS_IN_PRODUCTION) {
    ctx.addIssue({
      code: "custom",
      path: ["KEY_PROVIDER"],
      message:
        "the local key provider is for development; use vault in production (or set ALLOW_LOCAL_KEYS_IN_PRODUCTION=true)",
    });
  }
  if (env.KEY_PROVIDER !== "vault") return;
  if (!env.VAULT_ADDR)
    ctx.addIssue({ code: "custom", path: ["VAULT_ADDR"], message: "required when KEY_PROVIDER=vault" });
  if (env.VAULT_AUTH === "token" && !env.VAULT_TOKEN)
    ctx.addIssue({ code: "custom", path: ["VAULT_TOKEN"], message: "required when VAULT_AUTH=token" });
  if (env.VAULT_AUTH === "approle" && (!env.VAULT_ROLE_ID || !(env.VAULT_SECRET_ID || env.VAULT_SECRET_ID_FILE)))
    ctx.addIssue({
      code: "custom",
      path: ["VAULT_ROLE_ID"],
      message: "VAULT_ROLE_ID and VAULT_SECRET_ID(_FILE) required when VAULT_AUTH=approle",
    });
  if (env.VAULT_AUTH === "kubernetes" && !env.VAULT_K8S_ROLE)
    ctx.addIssue({ code: "custom", path: ["VAULT_K8S_ROLE"], message: "required when VAULT_AUTH=kubernetes" });
}

/**
 * Audit keys. Each process that writes audit records MACs them with its role's key,
 * read from a file (never from Redis, never from the environment itself).
 */
export const AuditEnv = z.object({
  /** This process's audit key: a file holding base64 of 32 random bytes (`openssl rand -base64 32`). */
  AUDIT_KEY_FILE: z.string().min(1).optional(),
  /** Keys `citadel audit verify` may use besides its own: comma-separated `path` or `role=path`. */
  AUDIT_KEY_FILES: ListEnv.optional(),
});
export type AuditEnv = z.infer<typeof AuditEnv>;

/** What the API and the CLI share about completion webhooks: the operator's key and the allowlist of targets. */
export const WebhookKeyEnv = z.object({
  /**
   * The operator's webhook key: a file holding base64 of at least 32 random bytes; every
   * tenant's webhook secret is derived from it. Without it, outside production, one is
   * derived from the dev keyring; in production webhooks are off until it is given.
   */
  WEBHOOK_KEY_FILE: z.string().min(1).optional(),
  /**
   * Callback targets allowed although not public (or over plain http): host names, IP
   * addresses and CIDR ranges, comma-separated. Empty: only public https targets.
   */
  WEBHOOK_ALLOW_HOSTS: ListEnv.default([]),
  /**
   * The ports a callback target that is not allowlisted may use, comma-separated: what
   * the deployment's egress rules let out (the Kubernetes NetworkPolicy opens 443).
   */
  WEBHOOK_PORTS: ListEnv.default(["443"])
    .refine((ps) => ps.length > 0 && ps.every((p) => /^[0-9]{1,5}$/.test(p) && Number(p) >= 1 && Number(p) <= 65535), {
      message: "must list ports (1-65535), comma-separated",
    })
    .transform((ps) => ps.map(Number)),
});
export type WebhookKeyEnv = z.infer<typeof WebhookKeyEnv>;

/** Bytes a key file must decode to. */
export const KEY_FILE_MIN_BYTES = 32;

/**
 * Reads a key file: base64 (standard or url-safe, whitespace ignored) of at least 32
 * bytes. The error names the file and the problem, never the contents.
 */
export function readKeyFile(file: string): Buffer {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new Error(`cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? "unreadable"})`);
  }
  const b64 = text.replace(/\s+/g, "");
  if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(b64))
    throw new Error(
      `${file} must hold base64 of ${KEY_FILE_MIN_BYTES} random bytes (e.g. \`openssl rand -base64 32\`)`,
    );
  const key = Buffer.from(b64, "base64");
  if (key.length < KEY_FILE_MIN_BYTES) {
    key.fill(0);
    throw new Error(`${file} holds a ${key.length}-byte key; at least ${KEY_FILE_MIN_BYTES} bytes are needed`);
  }
  return key;
}

/**
 * The env rule for a process that writes audit records (API, worker): in production
 * its key file is required. Pure, like every schema rule (rendered manifests are
 * checked against it where the file does not exist); the file itself is checked at
 * start-up by `checkAuditKeyOrExit`.
 */
export function refineAuditEnv(env: AuditEnv & { NODE_ENV: string }, ctx: z.RefinementCtx): void {
  if (!env.AUDIT_KEY_FILE && env.NODE_ENV === "production") {
    ctx.addIssue({
      code: "custom",
      path: ["AUDIT_KEY_FILE"],
      message: "required in production: a file holding this process's audit key (base64 of 32 random bytes)",
    });
  }
}

/**
 * What keeps a process from having its audit key, or null: the key file given must
 * be readable and long enough; without one (development) the dev keyring the key is
 * derived from must exist.
 */
export function auditKeyProblem(env: AuditEnv & { LOCAL_KEYRING: string }): string | null {
  if (env.AUDIT_KEY_FILE) {
    try {
      readKeyFile(env.AUDIT_KEY_FILE).fill(0);
      return null;
    } catch (err) {
      return `AUDIT_KEY_FILE: ${(err as Error).message}`;
    }
  }
  if (!existsSync(env.LOCAL_KEYRING))
    return "AUDIT_KEY_FILE: not set, and no dev keyring at LOCAL_KEYRING to derive an audit key from (run `citadel keys init`)";
  return null;
}

/** For a process entry point, after its env parsed: exits 78 naming the problem when the audit key cannot be had. */
export function checkAuditKeyOrExit(env: AuditEnv & { LOCAL_KEYRING: string }, app: string): void {
  const problem = auditKeyProblem(env);
  if (problem === null) return;
  process.stderr.write(`${app}: ${new ConfigError([problem]).message}\n`);
  process.exit(78);
}

/**
 * Node flags the API and the worker run with, wherever they start (the images' commands,
 * the Kubernetes manifests, `citadel` fleets): test/infra checks each start command has them.
 *
 * --initial-old-space-size=128: both processes hold their requests' tensors (up to MBs,
 * outside the JS heap) across several young collections, so V8 promotes them and, with
 * the default starting limit for a heap this small (~36 MB live), keeps starting full
 * collections — about one per 3–6 jobs of 1.7 MB, 10–12% of each process's CPU and half
 * of the API's. A 128 MB starting limit lets the young collections free them instead:
 * 16-sample OCR jobs went from 36 to 55 jobs/s on 2 cores (test/bench/multi-profile.ts),
 * for ~40–80 MB more resident memory. NODE_OPTIONS does not accept this flag.
 */
export const SERVICE_NODE_FLAGS: readonly string[] = ["--initial-old-space-size=128"];
