import { CitadelError, ModelRouting, type SignedManifest, type SignedRetirement } from "@citadel/contracts";
import type { Cluster, Redis } from "ioredis";

/**
 * Manifests and routing in Redis, under the deployment's prefix (one hash slot with
 * a `{…}` prefix, so a Redis Cluster keeps them together). Stores what it is given;
 * trust comes from signature checks by whoever reads (API and workers).
 */
export class ModelRegistry {
  private readonly modelsKey: string;
  private readonly routingKey: string;
  readonly channel: string;

  constructor(
    private readonly redis: Redis | Cluster,
    private readonly prefix: string,
  ) {
    this.modelsKey = `${prefix}:registry:models`;
    this.routingKey = `${prefix}:registry:routing`;
    this.channel = `${prefix}:registry:changed`;
  }

  private manifestsKey(name: string): string {
    return `${this.prefix}:registry:manifests:${name}`;
  }

  private retiredKey(name: string): string {
    return `${this.prefix}:registry:retired:${name}`;
  }

  /**
   * Stores a signed manifest. The first version of a model becomes stable; later ones
   * change routing only when asked (`stable`, or `canaryWeight` > 0).
   */
  async publish(
    signed: SignedManifest,
    routing: { stable?: boolean; canaryWeight?: number } = {},
  ): Promise<ModelRouting> {
    const { name, version } = signed.manifest;
    const current = await this.getRouting(name);
    let next: ModelRouting;
    if (!current || routing.stable) next = { stable: version, canaryWeight: 0 };
    else if (routing.canaryWeight !== undefined && routing.canaryWeight > 0)
      next = { stable: current.stable, canary: version, canaryWeight: routing.canaryWeight };
    else next = current;
    await this.redis
      .multi()
      .sadd(this.modelsKey, name)
      .hset(this.manifestsKey(name), version, JSON.stringify(signed))
      .hset(this.routingKey, name, JSON.stringify(next))
      .publish(this.channel, JSON.stringify({ name, version }))
      .exec();
    return next;
  }

  async setRouting(name: string, routing: ModelRouting): Promise<void> {
    const versions = await this.versions(name);
    for (const v of [routing.stable, routing.canary]) {
      if (v !== undefined && !versions.includes(v))
        throw new CitadelError("MODEL_NOT_FOUND", `${name}@${v} is not published`);
    }
    await this.redis
      .multi()
      .hset(this.routingKey, name, JSON.stringify(ModelRouting.parse(routing)))
      .publish(this.channel, JSON.stringify({ name }))
      .exec();
  }

  async models(): Promise<string[]> {
    return (await this.redis.smembers(this.modelsKey)).sort();
  }

  async versions(name: string): Promise<string[]> {
    return (await this.redis.hkeys(this.manifestsKey(name))).sort();
  }

  /** The stored manifest as parsed JSON (unverified). */
  async getManifest(name: string, version: string): Promise<unknown | null> {
    const raw = await this.redis.hget(this.manifestsKey(name), version);
    return raw === null ? null : (JSON.parse(raw) as unknown);
  }

  async getRouting(name: string): Promise<ModelRouting | null> {
    const raw = await this.redis.hget(this.routingKey, name);
    if (raw === null) return null;
    const parsed = ModelRouting.safeParse(JSON.parse(raw));
    if (!parsed.success) throw new CitadelError("MANIFEST_INVALID", `routing for ${name} is malformed`);
    return parsed.data;
  }

  /**
   * Stores a signed retirement and, in the same transaction, the routing without the
   * retired version (the caller refuses to retire the stable one). Readers honour a
   * retirement only when its signature verifies.
   */
  async retire(signed: SignedRetirement, routing: ModelRouting | null): Promise<void> {
    const { name, version } = signed.retirement;
    const m = this.redis.multi().hset(this.retiredKey(name), version, JSON.stringify(signed));
    if (routing) m.hset(this.routingKey, name, JSON.stringify(ModelRouting.parse(routing)));
    await m.publish(this.channel, JSON.stringify({ name, version })).exec();
  }

  /** The stored retirement of a version as parsed JSON (unverified), or null. */
  async getRetirement(name: string, version: string): Promise<unknown | null> {
    const raw = await this.redis.hget(this.retiredKey(name), version);
    return raw === null ? null : parseOrRaw(raw);
  }

  /** Every stored retirement of a model, by version (unverified). */
  async retirements(name: string): Promise<Map<string, unknown>> {
    const all = await this.redis.hgetall(this.retiredKey(name));
    return new Map(Object.entries(all).map(([v, raw]) => [v, parseOrRaw(raw)]));
  }

  /** Replaces a stored manifest as-is (operators and tamper tests; no routing change). */
  async putRaw(name: string, version: string, raw: string): Promise<void> {
    await this.redis
      .multi()
      .hset(this.manifestsKey(name), version, raw)
      .publish(this.channel, JSON.stringify({ name, version }))
      .exec();
  }
}

/** Picks stable or canary by weight; `rand` in [0,1). */
export function pickVersion(routing: ModelRouting, rand: number): string {
  if (routing.canary && routing.canaryWeight > 0 && rand < routing.canaryWeight) return routing.canary;
  return routing.stable;
}

/** JSON if it parses, else the raw string: a verifier then refuses it with its own code. */
function parseOrRaw(raw: string): unknown {
  try {
    return JSON.parse(raw) as unknown;
  } catch {
    return raw;
  }
}
