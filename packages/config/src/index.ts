import { z } from "zod";

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
  REDIS_URL: z.string().url().default("redis://127.0.0.1:6379"),
  /** BullMQ/Redis key prefix; the braces make it a Redis Cluster hash tag. */
  CITADEL_PREFIX: z.string().min(1).max(64).default("{citadel}"),
  MODEL_STORE_DIR: z.string().min(1).default(".citadel/store"),
});
export type CommonEnv = z.infer<typeof CommonEnv>;

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
