import { openArtifact, retirementHolds, verifyManifest } from "@citadel/artifacts";
import type { AuditSink } from "@citadel/audit";
import { CitadelError, coerceError, type ManifestBody, type TrustedSigner } from "@citadel/contracts";
import type { KeyProvider } from "@citadel/keys";
import type { FsModelStore, ModelRegistry } from "@citadel/registry";
import { type LoadedInfo, ModelRunner, type ProviderName } from "@citadel/runtime";
import type { Logger } from "@citadel/telemetry";
import { type LoadPhases, observeLoadPhases, phaseMsOf, round2, timedUnwrap } from "./load-phases.js";
import { type LoadBound, LruBound } from "./lru.js";
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
  /** What this worker (one GPU) holds loaded at once; unbounded when absent. */
  bound?: LoadBound;
}

/** One model version this host has, is loading, or waits to load. */
interface Entry {
  key: string;
  name: string;
  version: string;
  p: Promise<LoadedModel>;
  /** Set once its session exists; the last one when a dead runner is being replaced. */
  model: LoadedModel | null;
  /** Loading or reloading: not evictable. */
  loading: boolean;
  /** Plaintext size (ciphertext less the GCM tag), what the byte budget counts. */
  bytes: number;
}

interface Waiter {
  entry: Entry;
  resolve: (evicted: Promise<void>) => void;
  reject: (err: Error) => void;
}

/**
 * Loads model versions through the whole chain of trust and keeps each loaded once:
 * manifest → signature against pinned keys → artifact → hashes → key unwrap → GCM
 * decrypt in memory → session in a runner thread. Plaintext never touches disk and
 * is wiped (in the runner) as soon as the session exists.
 *
 * With a bound, it holds at most that many sessions (or bytes): a model that is not
 * loaded waits, after its manifest verifies, until the least recently used idle one
 * has been closed. A model is busy, and never evicted, while it loads and while a
 * batch holds it (`pin`). When every held model is busy the load waits rather than
 * going over the bound: the bound is there so that the GPU does not run out of memory.
 */
export class ModelHost {
  private readonly loaded = new Map<string, Entry>();
  private readonly rejected = new Map<string, { error: CitadelError; until: number }>();
  /** Batches running per `name@version` (loaded or not). */
  private readonly pins = new Map<string, number>();
  private readonly lru: LruBound<Entry>;
  /** Loads waiting for room, served in arrival order. */
  private readonly waiting: Waiter[] = [];
  /** Entries whose session exists and has not been closed: what the gauges show. */
  private readonly sessions = new Set<Entry>();
  private closed = false;

  constructor(private readonly o: ModelHostOptions) {
    this.lru = new LruBound(o.bound ?? { maxModels: Number.MAX_SAFE_INTEGER });
    this.gauge();
  }

  /** The loaded model, loading it first if needed; rejects with the integrity/load error code. */
  get(name: string, version: string): Promise<LoadedModel> {
    const key = `${name}@${version}`;
    const bad = this.rejected.get(key);
    if (bad && bad.until > Date.now()) return Promise.reject(bad.error);
    const e = this.loaded.get(key);
    if (e) {
      this.lru.touch(e);
      // A runner abandoned after a timeout is replaced on next use; one evicted meanwhile
      // is loaded again as a new entry, which takes its place in the bound.
      e.p = e.p.then((m) => {
        if (m.runner.alive) return m;
        return this.loaded.get(key) === e ? this.reload(e) : this.get(name, version);
      });
      e.p.catch(() => this.forget(e));
      return e.p;
    }
    const entry: Entry = { key, name, version, p: NOT_YET, model: null, loading: true, bytes: 0 };
    entry.p = this.load(entry, true);
    this.loaded.set(key, entry);
    entry.p.then(
      () => this.settled(entry),
      () => this.forget(entry),
    );
    return entry.p;
  }

  /**
   * Marks `name@version` busy until the returned release is called: a batch holds it
   * from before it asks for the model until its jobs are settled, so the model is not
   * evicted between the two.
   */
  pin(name: string, version: string): () => void {
    const key = `${name}@${version}`;
    this.pins.set(key, (this.pins.get(key) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.pins.get(key) ?? 1) - 1;
      if (n > 0) this.pins.set(key, n);
      else this.pins.delete(key);
      this.pump();
    };
  }

  private reload(e: Entry): Promise<LoadedModel> {
    this.o.log.warn({ model: e.name, version: e.version }, "runner was replaced; reloading model");
    // It keeps its place in the bound: the dead runner's session is gone.
    e.loading = true;
    const p = this.load(e, false);
    p.then(
      () => this.settled(e),
      () => undefined,
    );
    return p;
  }

  private settled(e: Entry): void {
    e.loading = false;
    this.pump();
  }

  /** Drops an entry whose load failed; its place in the bound goes to the next waiter. */
  private forget(e: Entry): void {
    if (this.loaded.get(e.key) === e) this.loaded.delete(e.key);
    e.loading = false;
    this.dequeue(e);
    this.lru.remove(e);
    this.sessions.delete(e);
    this.gauge();
    this.pump();
  }

  private busy(e: Entry): boolean {
    return e.loading || (this.pins.get(e.key) ?? 0) > 0;
  }

  /** Waits for room for `e` (evicting idle models, least recently used first, and closing them). */
  private async reserve(e: Entry): Promise<void> {
    if (this.closed) throw new CitadelError("MODEL_LOAD_FAILED", "the worker is stopping");
    const evicted = await new Promise<Promise<void>>((resolve, reject) => {
      this.waiting.push({ entry: e, resolve, reject });
      this.pump();
    });
    // Their memory is released before this model's session is created.
    await evicted;
  }

  private dequeue(e: Entry): void {
    const i = this.waiting.findIndex((w) => w.entry === e);
    if (i >= 0) this.waiting.splice(i, 1);
  }

  /** Grants room to the waiting loads, in order, while the bound allows. */
  private pump(): void {
    for (let w = this.waiting[0]; w; w = this.waiting[0]) {
      const victims = this.lru.admit(w.entry, w.entry.bytes, (v) => this.busy(v));
      if (!victims) break;
      this.waiting.shift();
      w.resolve(Promise.all(victims.map((v) => this.evict(v))).then(() => undefined));
    }
    this.o.metrics.modelLoadsWaiting.set(this.waiting.length);
  }

  /** Loads waiting for room: every model held is busy. */
  get waitingLoads(): number {
    return this.waiting.length;
  }

  private async evict(e: Entry): Promise<void> {
    if (this.loaded.get(e.key) === e) this.loaded.delete(e.key);
    const m = e.model;
    if (!m) return;
    // A runner abandoned after a timeout may never exit (hung native code): it is counted
    // as hung already, and waiting for it would stall this load.
    if (m.runner.alive) await m.runner.close();
    this.sessions.delete(e);
    this.gauge();
    this.o.metrics.modelEvictions.inc({ model: e.name, version: e.version });
    this.o.audit.record("model.unloaded", {
      model: e.name,
      version: e.version,
      workerId: this.o.workerId,
      outcome: "evicted",
    });
    this.o.log.info({ model: e.name, version: e.version }, "model evicted (least recently used)");
  }

  private gauge(): void {
    let bytes = 0;
    for (const e of this.sessions) bytes += e.bytes;
    this.o.metrics.modelsLoaded.set(this.sessions.size);
    this.o.metrics.modelsLoadedBytes.set(bytes);
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
    for (const [key, e] of this.loaded) {
      if (e.name !== name || keep.has(e.version)) continue;
      this.loaded.delete(key);
      const m = await e.p.catch(() => null);
      if (m) {
        // Not a hung abandoned runner's exit: that may never come.
        if (m.runner.alive) await m.runner.close();
        this.sessions.delete(e);
        this.lru.remove(e);
        this.gauge();
        this.pump();
        this.o.audit.record("model.unloaded", {
          model: name,
          version: e.version,
          workerId: this.o.workerId,
          outcome: "unserved",
        });
      }
    }
  }

  /** Loads `e`; `reserve`: take a place in the bound first (not when replacing a dead runner). */
  private async load(entry: Entry, reserve: boolean): Promise<LoadedModel> {
    const { o } = this;
    const { name, version } = entry;
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
      // Verified first, so that a model that will be refused takes no one's place.
      entry.bytes = Math.max(0, manifest.artifact.ciphertextBytes - GCM_TAG_BYTES);
      const tReserve = performance.now();
      if (reserve) await this.reserve(entry);
      // Waiting for room (an eviction, or busy models) is not part of any load phase.
      const reserveMs = performance.now() - tReserve;
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
        fetch: tOpen - t0 - reserveMs,
        key: keyMs,
        decrypt: tSession - tOpen - keyMs,
        session: tEnd - tSession,
        loadMs: tEnd - t0,
      };
      observeLoadPhases(o.metrics, name, version, phases);
      const loaded: LoadedModel = { manifest, runner, info, phases };
      entry.model = loaded;
      this.sessions.add(entry);
      this.gauge();
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
      return loaded;
    } catch (err) {
      // A load cut short by shutdown is not a verdict on the model.
      if (this.closed) throw err;
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
    this.closed = true;
    for (const w of this.waiting.splice(0)) w.reject(new CitadelError("MODEL_LOAD_FAILED", "the worker is stopping"));
    this.o.metrics.modelLoadsWaiting.set(0);
    const all = [...this.loaded.values()];
    this.loaded.clear();
    await Promise.allSettled(all.map(async (e) => (await e.p).runner.close()));
    this.sessions.clear();
    this.gauge();
  }
}

/** The placeholder of an entry's promise until its load has begun. */
const NOT_YET: Promise<never> = new Promise(() => {});

/** AES-256-GCM appends a 16-byte tag: the plaintext is the ciphertext less that. */
const GCM_TAG_BYTES = 16;

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
