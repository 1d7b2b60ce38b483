import { createHash } from "node:crypto";
import { retirementHolds, verifyManifest } from "@citadel/artifacts";
import { CitadelError, type ManifestBody, type ModelRouting, type TrustedSigner } from "@citadel/contracts";
import { type ModelRegistry, pickVersion } from "@citadel/registry";

export interface CatalogLogger {
  warn(obj: object, msg: string): void;
}

/**
 * The API's view of the registry: routing and verified manifests, cached and
 * refreshed on registry change events. The API validates against manifests whose
 * signatures it has checked itself, so a write to Redis cannot loosen validation.
 *
 * Only routed versions are served, and never a retired one: the routing kept here
 * has retired versions taken out (a model whose stable version is retired has none),
 * so a Redis writer who routes a retired version again gains nothing. Retirements
 * count only when signed by a pinned signer; a forged one is ignored with a warning.
 */
export class ModelCatalog {
  private readonly manifests = new Map<string, Promise<ManifestBody>>();
  private routing = new Map<string, ModelRouting>();
  private names: string[] = [];
  private loadedAt = 0;
  private started = 0;
  private applied = 0;
  /** Forged retirements already warned about (by content), so a resync does not repeat it. */
  private readonly warned = new Set<string>();

  constructor(
    private readonly registry: ModelRegistry,
    private readonly trusted: () => readonly TrustedSigner[],
    private readonly log: CatalogLogger,
  ) {}

  get ready(): boolean {
    return this.loadedAt > 0;
  }

  /** Re-reads models and routing, then swaps them in at once (requests never see a half-read registry). */
  async refresh(): Promise<void> {
    // Refreshes overlap (events and the periodic resync); a slower, older one must not
    // overwrite what a newer one already applied.
    const gen = ++this.started;
    const names = await this.registry.models();
    const routing = new Map<string, ModelRouting>();
    for (const n of names) {
      const r = await this.registry.getRouting(n);
      const served = r && this.withoutRetired(n, r, await this.registry.retirements(n));
      if (served) routing.set(n, served);
    }
    if (gen < this.applied) return;
    this.applied = gen;
    const changed = JSON.stringify([...routing]) !== JSON.stringify([...this.routing]);
    this.names = names;
    this.routing = routing;
    // Verified manifests stay cached unless routing changed (a re-publish changes routing or adds a version).
    if (changed) this.manifests.clear();
    this.loadedAt = Date.now();
  }

  /** Routing with validly retired versions taken out; null when the stable one is retired. */
  private withoutRetired(name: string, r: ModelRouting, retired: Map<string, unknown>): ModelRouting | null {
    if (this.isRetired(name, r.stable, retired.get(r.stable))) return null;
    if (r.canary !== undefined && this.isRetired(name, r.canary, retired.get(r.canary)))
      return { stable: r.stable, canaryWeight: 0 };
    return r;
  }

  private isRetired(name: string, version: string, raw: unknown): boolean {
    return retirementHolds(raw, this.trusted(), { name, version }, (e) => {
      const seen = createHash("sha256")
        .update(`${name}@${version}|${JSON.stringify(raw)}`)
        .digest("hex");
      if (this.warned.has(seen)) return;
      if (this.warned.size >= 1000) this.warned.clear(); // bounded: a flood of forgeries is warned about again
      this.warned.add(seen);
      this.log.warn(
        { model: name, version, code: e.code, reason: e.message },
        "ignoring a retirement that does not verify",
      );
    });
  }

  /** Forgets cached manifests (a registry event may have replaced one in place). */
  invalidate(): void {
    this.manifests.clear();
  }

  models(): string[] {
    return this.names;
  }

  /** The model's routing as served: retired versions already taken out. */
  routingOf(name: string): ModelRouting | undefined {
    return this.routing.get(name);
  }

  /**
   * The version a request goes to: the one asked for if it is routed (stable or
   * canary), or stable/canary by weight. Any other version, old or retired, is not
   * found; the answer names no other version.
   */
  resolveVersion(name: string, requested?: string): string {
    const r = this.routing.get(name);
    if (!r) throw new CitadelError("MODEL_NOT_FOUND", `model '${name}' is not published`);
    if (requested === undefined) return pickVersion(r, Math.random());
    if (requested !== r.stable && requested !== r.canary)
      throw new CitadelError("MODEL_NOT_FOUND", `model '${name}' has no version '${requested}' that is served`);
    return requested;
  }

  manifest(name: string, version: string): Promise<ManifestBody> {
    const key = `${name}@${version}`;
    let p = this.manifests.get(key);
    if (!p) {
      p = (async () => {
        const raw = await this.registry.getManifest(name, version);
        if (raw === null) throw new CitadelError("MODEL_NOT_FOUND", `model '${name}' has no version '${version}'`);
        return verifyManifest(raw, this.trusted(), { name, version });
      })();
      this.manifests.set(key, p);
      p.catch(() => this.manifests.delete(key));
    }
    return p;
  }
}
