import { CitadelApiError } from "@citadel/client";
import {
  AuditEnv,
  CommonEnv,
  EVEN_WITH_ISSUES,
  KeyEnv,
  parseEnv,
  refineCommonEnv,
  refineKeyEnv,
  WebhookKeyEnv,
} from "@citadel/config";
import { CitadelError, type TrustedSigner } from "@citadel/contracts";
import { type KeyService, keyServiceFromEnv, readTrustedSigners } from "@citadel/keys";
import { closeRedis, type RedisConn, redisClient } from "@citadel/queue";
import { FsModelStore, ModelRegistry } from "@citadel/registry";
import { z } from "zod";
import { zodMessage } from "./zod-message.js";

export const CliEnv = CommonEnv.extend(KeyEnv.shape)
  .extend(AuditEnv.shape)
  .extend(WebhookKeyEnv.shape)
  .superRefine((env, ctx) => {
    refineKeyEnv(env, ctx);
    refineCommonEnv(env, ctx);
  }, EVEN_WITH_ISSUES);
export type CliEnv = z.infer<typeof CliEnv>;

/** What most verbs need: the registry in Redis, the model store and the key service. */
export interface CliContext {
  env: CliEnv;
  redis: RedisConn;
  registry: ModelRegistry;
  store: FsModelStore;
  keys(): Promise<KeyService>;
  /** The signer keys the fleet pins: TRUSTED_SIGNERS, or the key service's own public keys. */
  trusted(): Promise<TrustedSigner[]>;
  /** A warning for the operator (stderr), not a failure. */
  warn(message: string): void;
  close(): Promise<void>;
}

export function loadCliEnv(overrides: Record<string, string | undefined> = {}): CliEnv {
  return parseEnv(CliEnv, { ...process.env, ...overrides });
}

export function openContext(env: CliEnv = loadCliEnv()): CliContext {
  // Connection errors surface as failed commands, which every verb reports; the
  // listener only keeps ioredis from raising an unhandled 'error' event as well.
  const redis = redisClient(env, () => undefined, { lazyConnect: true, maxRetriesPerRequest: 2 });
  let keys: Promise<KeyService> | undefined;
  return {
    env,
    redis,
    registry: new ModelRegistry(redis, env.CITADEL_PREFIX),
    store: new FsModelStore(env.MODEL_STORE_DIR),
    keys: () => {
      keys ??= keyServiceFromEnv(env);
      return keys;
    },
    trusted: async () => {
      if (env.TRUSTED_SIGNERS) return readTrustedSigners(env.TRUSTED_SIGNERS);
      keys ??= keyServiceFromEnv(env);
      return (await keys).publicKeys();
    },
    warn: (message) => process.stderr.write(`citadel: warning: ${message}\n`),
    close: async () => {
      if (keys) await (await keys).close();
      if (redis.status === "ready") await closeRedis(redis);
      else redis.disconnect();
    },
  };
}

/**
 * Prints a CLI failure as one line (no stack, no secrets) and sets the exit code: the
 * API's refusals as `CODE: message (HTTP status)`, schema failures with their paths.
 */
export function reportError(err: unknown): void {
  if (err instanceof CitadelError) process.stderr.write(`citadel: ${err.code}: ${err.message}\n`);
  else if (err instanceof CitadelApiError)
    process.stderr.write(`citadel: ${err.code}: ${err.message} (HTTP ${err.status})\n`);
  else if (err instanceof z.ZodError) process.stderr.write(`citadel: VALIDATION_FAILED: ${zodMessage(err.issues)}\n`);
  else if (err instanceof Error) process.stderr.write(`citadel: ${err.message}\n`);
  else process.stderr.write("citadel: failed\n");
  process.exitCode = 1;
}

export const print = (s: string) => process.stdout.write(`${s}\n`);
