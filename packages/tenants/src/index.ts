import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { CallbackUrl, CitadelError, OutputPolicy } from "@citadel/contracts";
import type { Cluster, Redis } from "ioredis";
import { z } from "zod";

export const WebhookSecretState = z.strictObject({
  generation: z.number().int().min(1),
  previousUntil: z.number().int().optional(),
});
export type WebhookSecretState = z.infer<typeof WebhookSecretState>;

export const Tenant = z.strictObject({
  id: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/),
  /** Model names this tenant may use; ["*"] for all. */
  models: z.array(z.string()).min(1),
  /** Requests per second (token bucket refill) and burst. */
  requestRate: z.number().positive().default(50),
  requestBurst: z.number().int().positive().default(100),
  /** Samples (batch items) per second and burst. */
  sampleRate: z.number().positive().default(500),
  sampleBurst: z.number().int().positive().default(2000),
  maxQueuedJobs: z.number().int().positive().default(10_000),
  /**
   * May submit `priority: "high"` (jumps ahead of every tenant's queued work). A right
   * given explicitly, never by default: one tenant's urgent jobs delay everyone else's.
   */
  allowHighPriority: z.boolean().default(false),
  /** Per-model output-policy overrides (only ever tighten the model's policy). */
  outputPolicy: z.record(z.string(), OutputPolicy).default({}),
  roles: z.array(z.enum(["tenant", "admin", "ops-read"])).default(["tenant"]),
  /** Where this tenant's completed jobs and batches are notified (signed webhooks); none when absent. */
  callbackUrl: CallbackUrl.optional(),
  /**
   * May name a callback URL per job or batch (else only `callbackUrl` is called): a right
   * given explicitly, since every such URL is a target the fleet sends requests to.
   */
  allowRequestCallbacks: z.boolean().default(false),
  /**
   * Which webhook secret signs this tenant's notifications. The secret itself is never
   * stored: it is derived from the operator's webhook key and the generation
   * (@citadel/webhooks). A rotation moves to the next generation and keeps signing with
   * the previous one too until `previousUntil` (epoch ms), so receivers can switch over.
   */
  webhookSecret: WebhookSecretState.default({ generation: 1 }),
});
export type Tenant = z.infer<typeof Tenant>;
export type TenantInput = z.input<typeof Tenant>;

const KEY_PREFIX = "ctd_";

/**
 * API keys are 256-bit random strings; only their SHA-256 is stored. A fast hash is
 * right here (unlike passwords): the keys have full entropy, so it cannot be guessed.
 */
export function hashApiKey(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}

export function newApiKey(): string {
  return `${KEY_PREFIX}${randomBytes(32).toString("base64url")}`;
}

export function allowsModel(t: Tenant, model: string): boolean {
  return t.models.includes("*") || t.models.includes(model);
}

/** Tenants and their key hashes in Redis; changes apply without a restart. */
export class TenantStore {
  private readonly defsKey: string;
  private readonly keysKey: string;
  private readonly cache = new Map<string, { tenant: Tenant | null; until: number }>();

  constructor(
    private readonly redis: Redis | Cluster,
    prefix: string,
    /** How long an authentication result is cached; bounds how long a revoked key lives. */
    private readonly cacheMs = 2000,
  ) {
    this.defsKey = `${prefix}:tenants:defs`;
    this.keysKey = `${prefix}:tenants:keys`;
  }

  /**
   * Creates or replaces a tenant's definition. The webhook secret's generation is kept
   * unless given: re-adding a tenant must not bring back a secret rotated away.
   */
  async upsert(input: TenantInput): Promise<Tenant> {
    const kept = input.webhookSecret ?? (await this.get(Tenant.shape.id.parse(input.id)))?.webhookSecret;
    const t = Tenant.parse({ ...input, ...(kept ? { webhookSecret: kept } : {}) });
    await this.redis.hset(this.defsKey, t.id, JSON.stringify(t));
    this.cache.clear();
    return t;
  }

  /**
   * Moves a tenant to its next webhook secret; the current one keeps signing beside it
   * for `graceMs` (0: at once replaced). Returns the tenant as now stored.
   */
  async rotateWebhookSecret(id: string, graceMs: number): Promise<Tenant> {
    const t = await this.get(id);
    if (!t) throw new CitadelError("VALIDATION_FAILED", `no tenant '${id}'`);
    const next: WebhookSecretState = {
      generation: t.webhookSecret.generation + 1,
      ...(graceMs > 0 ? { previousUntil: Date.now() + graceMs } : {}),
    };
    return this.upsert({ ...t, webhookSecret: next });
  }

  async get(id: string): Promise<Tenant | null> {
    const raw = await this.redis.hget(this.defsKey, id);
    return raw ? Tenant.parse(JSON.parse(raw)) : null;
  }

  async list(): Promise<Tenant[]> {
    const all = await this.redis.hvals(this.defsKey);
    return all.map((r) => Tenant.parse(JSON.parse(r)));
  }

  /** Issues a new key for a tenant and returns it once; only its hash is kept. */
  async issueKey(tenantId: string): Promise<string> {
    if (!(await this.get(tenantId))) throw new CitadelError("VALIDATION_FAILED", `no tenant '${tenantId}'`);
    const key = newApiKey();
    await this.redis.hset(this.keysKey, hashApiKey(key), tenantId);
    return key;
  }

  /** Registers a key the caller already holds (seeding from a secret store). */
  async addKey(tenantId: string, key: string): Promise<void> {
    await this.redis.hset(this.keysKey, hashApiKey(key), tenantId);
    this.cache.clear();
  }

  /** Revokes by the key itself or by a hash prefix of at least 12 hex characters. */
  async revokeKey(keyOrHashPrefix: string): Promise<number> {
    let hashes: string[];
    if (keyOrHashPrefix.startsWith(KEY_PREFIX)) hashes = [hashApiKey(keyOrHashPrefix)];
    else {
      if (!/^[0-9a-f]{12,64}$/.test(keyOrHashPrefix))
        throw new CitadelError("VALIDATION_FAILED", "give the key or ≥12 hex chars of its hash");
      hashes = (await this.redis.hkeys(this.keysKey)).filter((h) => h.startsWith(keyOrHashPrefix));
    }
    const n = hashes.length ? await this.redis.hdel(this.keysKey, ...hashes) : 0;
    this.cache.clear();
    return n;
  }

  async keyHashes(tenantId: string): Promise<string[]> {
    const all = await this.redis.hgetall(this.keysKey);
    return Object.entries(all)
      .filter(([, t]) => t === tenantId)
      .map(([h]) => h.slice(0, 12));
  }

  /** The tenant owning `key`, or null. Never logs or stores the key itself. */
  async authenticate(key: string): Promise<Tenant | null> {
    if (!key.startsWith(KEY_PREFIX) || key.length > 128) return null;
    const hash = hashApiKey(key);
    const hit = this.cache.get(hash);
    if (hit && hit.until > Date.now()) return hit.tenant;
    const id = await this.redis.hget(this.keysKey, hash);
    const tenant = id ? await this.get(id) : null;
    if (this.cache.size > 10_000) this.cache.clear();
    this.cache.set(hash, { tenant, until: Date.now() + this.cacheMs });
    return tenant;
  }
}

/** Constant-time string comparison for shared secrets (board credentials). */
export function safeEqual(a: string, b: string): boolean {
  const ha = createHash("sha256").update(a).digest();
  const hb = createHash("sha256").update(b).digest();
  return timingSafeEqual(ha, hb);
}
