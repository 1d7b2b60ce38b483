import { verifyManifest } from "@citadel/artifacts";
import { CitadelError, type ManifestBody, type ModelRouting, type TrustedSigner } from "@citadel/contracts";
import { type ModelRegistry, pickVersion } from "@citadel/registry";

/**
 * The API's view of the registry: routing and verified manifests, cached and
 * refreshed on registry change events. The API validates against manifests whose
 * signatures it has checked itself, so a write to Redis cannot loosen validation.
 */
export class ModelCatalog {
  private readonly manifests = new Map<string, Promise<ManifestBody>>();
  private routing = new Map<string, ModelRouting>();
  private names: string[] = [];
  private loadedAt = 0;
  private started = 0;
  private applied = 0;

  constructor(
    private readonly registry: ModelRegistry,
    private readonly trusted: () => readonly TrustedSigner[],
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
      if (r) routing.set(n, r);
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

  /** Forgets cached manifests (a registry event may have replaced one in place). */
  invalidate(): void {
    this.manifests.clear();
  }

  models(): string[] {
    return this.names;
  }

  routingOf(name: string): ModelRouting | undefined {
    return this.routing.get(name);
  }

  /** The version a request goes to: the one asked for, or stable/canary by weight. */
  resolveVersion(name: string, requested?: string): string {
    const r = this.routing.get(name);
    if (!r) throw new CitadelError("MODEL_NOT_FOUND", `model '${name}' is not published`);
    return requested ?? pickVersion(r, Math.random());
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
