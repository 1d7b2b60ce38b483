import { openArtifact, retirementHolds, verifyManifest } from "@citadel/artifacts";
import type { AuditSink } from "@citadel/audit";
import { CitadelError, coerceError, type ManifestBody, type TrustedSigner } from "@citadel/contracts";
import type { KeyProvider } from "@citadel/keys";
import type { FsModelStore, ModelRegistry } from "@citadel/registry";
import { type LoadedInfo, ModelRunner, type ProviderName } from "@citadel/runtime";
import type { Logger } from "@citadel/telemetry";
import { type LoadPhases, observeLoadPhases, phaseMsOf, round2, timedUnwrap } from "./load-phases.js";
import type { WorkerMetrics } from "./metrics.js";
import { checkModelIo } from "./model-io.js";

export interface LoadedModel {
  manifest: ManifestBody;
  runner: ModelRunner;
  info: LoadedInfo;
  /** Where the load's time went (cold-start split); firstRun is set after the first run. */
  phases?: LoadPhases;
}

export interface ModelHostOptions {
  registry: ModelRegistry;
  store: FsModelStore;
  keys: KeyProvider;
  trusted: () => readonly TrustedSigner[];
  audit: AuditSink;
  metrics: WorkerMetrics;
  log: Logger;
  workerId: string;
  /** Overrides the manifest's provider list (e.g. a CPU-only node). */
  providers?: ProviderName[];
  requireGpu: boolean;
  deviceId: number;
  threads: number;
  /** A rejected model is not re-fetched for this long (integrity failures stay failures). */
  rejectionTtlMs: number;
}

/**
 * Loads model versions through the whole chain of trust and keeps each loaded once:
 * manifest → signature against pinned keys → artifact → hashes → key unwrap → GCM
 * decrypt in memory → session in a runner thread. Plaintext never touches disk and
 * is wiped (in the runner) as soon as the session exists.
 */
export class ModelHost {
  private readonly loaded = new Map<string, Promise<LoadedModel>>();
  private readonly rejected = new Map<string, { error: CitadelError; until: number }>();

  constructor(private readonly o: ModelHostOptions) {}

  /** The loaded model, loading it first if needed; rejects with the integrity/load error code. */
  get(name: string, version: string): Promise<LoadedModel> {
    const key = `${name}@${version}`;
    const bad = this.rejected.get(key);
    if (bad && bad.until > Date.now()) return Promise.reject(bad.error);
    let p = this.loaded.get(key);
    if (p) {
      // A runner abandoned after a timeout is replaced on next use.
      p = p.then((m) => (m.runner.alive ? m : this.reload(key, name, version)));
      this.loaded.set(key, p);
      return p;
    }
    p = this.load(name, version);
    this.loaded.set(key, p);
    p.catch(() => this.loaded.delete(key));
    return p;
  }

  private reload(key: string, name: string, version: string): Promise<LoadedModel> {
    this.o.log.warn({ model: name, version }, "runner was replaced; reloading model");
    const p = this.load(name, version);
    this.loaded.set(key, p);
    p.catch(() => this.loaded.delete(key));
    return p;
  }

  /**
   * After a registry change: unloads every version no longer served — not routed, or
   * retired by a trusted signer (even if a Redis writer routed it again).
   */
  async refresh(name: string): Promise<void> {
    const routing = await this.o.registry.getRouting(name);
    const keep = new Set<string>();
    for (const v of [routing?.stable, routing?.canary]) {
      if (v && !retiredByTrustedSigner(await this.o.registry.getRetirement(name, v), name, v, this.o)) keep.add(v);
    }
    await this.retain(name, keep);
  }

  /** Unloads versions not in `keep` once their in-flight runs end (the runner serialises). */
  async retain(name: string, keep: ReadonlySet<string>): Promise<void> {
    for (const [key, p] of this.loaded) {
      const [n, v] = key.split("@");
      if (n !== name || (v && keep.has(v))) continue;
      this.loaded.delete(key);
      const m = await p.catch(() => null);
      if (m) {
        await m.runner.close();
        this.o.audit.record("model.unloaded", { model: name, version: v, workerId: this.o.workerId });
      }
    }
  }

  private async load(name: string, version: string): Promise<LoadedModel> {
    const { o } = this;
    const t0 = performance.now();
    let manifest: ManifestBody | undefined;
    try {
      // Only routed versions are served: an old version (say, one published before its
      // output policy was tightened) cannot be loaded just because a job names it, and a
      // retired one not even when a Redis writer routes it again.
      const routing = await o.registry.getRouting(name);
      if (routing?.stable !== version && routing?.canary !== version)
        throw new CitadelError("MODEL_NOT_FOUND", `${name}@${version} is not routed`);
      if (retiredByTrustedSigner(await o.registry.getRetirement(name, version), name, version, o))
        throw new CitadelError("MODEL_NOT_FOUND", `${name}@${version} is retired`);
      const raw = await o.registry.getManifest(name, version);
      if (raw === null) throw new CitadelError("MODEL_NOT_FOUND", `${name}@${version} is not in the registry`);
      manifest = verifyManifest(raw, o.trusted(), { name, version });
      const artifact = await o.store.get(name, version);
      const tOpen = performance.now();
      let keyMs = 0;
      const plaintext = await openArtifact(
        manifest,
        artifact,
        timedUnwrap(o.keys, (ms) => (keyMs += ms)),
      );
      const tSession = performance.now();
      const providers = o.providers ?? manifest.executionProviders;
      // `plaintext` is transferred into the runner and wiped there after create().
      const { runner, info } = await ModelRunner.start(plaintext, {
        providers,
        requireGpu: o.requireGpu,
        deviceId: o.deviceId,
        threads: o.threads,
      });
      // Transferred (detached, length 0) in the usual case; wiped here if it was copied.
      if (plaintext.byteLength > 0) plaintext.fill(0);
      try {
        checkModelIo(manifest, info);
      } catch (err) {
        await runner.close();
        throw err;
      }
      const tEnd = performance.now();
      const phases: LoadPhases = {
        fetch: tOpen - t0,
        key: keyMs,
        decrypt: tSession - tOpen - keyMs,
        session: tEnd - tSession,
        loadMs: tEnd - t0,
      };
      observeLoadPhases(o.metrics, name, version, phases);
      o.metrics.modelLoads.inc({ model: name, version, outcome: "loaded" });
      o.metrics.providerInfo.set({ model: name, version, provider: info.provider }, 1);
      o.audit.record("model.loaded", {
        model: name,
        version,
        workerId: o.workerId,
        artifactSha256: manifest.artifact.plaintextSha256,
        provider: info.provider,
        inferenceMs: Math.round(performance.now() - t0),
        outcome: "loaded",
      });
      o.log.info(
        {
          model: name,
          version,
          provider: info.provider,
          attempts: info.attempts,
          loadMs: round2(phases.loadMs),
          phaseMs: phaseMsOf(phases),
        },
        "model loaded",
      );
      return { manifest, runner, info, phases };
    } catch (err) {
      const e =
        err instanceof CitadelError
          ? err
          : new CitadelError("MODEL_LOAD_FAILED", "model could not be loaded", undefined, { cause: coerceError(err) });
      o.metrics.modelLoads.inc({ model: name, version, outcome: e.code });
      o.audit.record("model.rejected", {
        model: name,
        version,
        workerId: o.workerId,
        errorCode: e.code,
        outcome: "rejected",
        detail: e.message,
      });
      o.log.error({ model: name, version, code: e.code, reason: e.message, err: e.cause }, "model rejected");
      // Vault outages are transient; integrity failures are not worth re-fetching soon.
      if (e.code !== "VAULT_UNAVAILABLE")
        this.rejected.set(`${name}@${version}`, { error: e, until: Date.now() + o.rejectionTtlMs });
      throw e;
    }
  }

  /** Forgets a cached rejection (after a re-publish). */
  forgetRejection(name: string): void {
    for (const key of this.rejected.keys()) if (key.startsWith(`${name}@`)) this.rejected.delete(key);
  }

  async close(): Promise<void> {
    const all = [...this.loaded.values()];
    this.loaded.clear();
    await Promise.allSettled(all.map(async (p) => (await p).runner.close()));
  }
}

/** Whether a stored retirement holds (signed by a pinned signer, for this version); a forged one is logged and ignored. */
function retiredByTrustedSigner(
  raw: unknown,
  name: string,
  version: string,
  o: Pick<ModelHostOptions, "trusted" | "log">,
): boolean {
  return retirementHolds(raw, o.trusted(), { name, version }, (e) =>
    o.log.warn({ model: name, version, code: e.code, reason: e.message }, "ignoring a retirement that does not verify"),
  );
}
