/**
 * Unwrapped data keys, held in memory for a bounded time so a Vault outage does not stop
 * loads of models whose keys were already seen. Least-recently-used eviction at a size
 * bound; every entry that leaves (expiry, eviction, delete, clear) is overwritten with zeros.
 */
export class KeyCache {
  private readonly entries = new Map<string, { key: Buffer; expiresAt: number }>();

  constructor(
    private readonly ttlMs: number,
    private readonly max: number,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** A fresh copy the caller owns (and should wipe); undefined when absent or expired. */
  get(id: string): Buffer | undefined {
    const entry = this.entries.get(id);
    if (!entry) return undefined;
    if (entry.expiresAt <= this.now()) {
      this.delete(id);
      return undefined;
    }
    this.entries.delete(id);
    this.entries.set(id, entry); // most recently used goes last
    return copyKey(entry.key);
  }

  /** Stores `key` and takes ownership of it: the cache wipes it when the entry leaves. */
  put(id: string, key: Buffer): void {
    if (this.ttlMs <= 0) {
      key.fill(0);
      return;
    }
    this.delete(id);
    this.entries.set(id, { key, expiresAt: this.now() + this.ttlMs });
    while (this.entries.size > this.max) {
      const oldest = this.entries.keys().next();
      if (oldest.done) break;
      this.delete(oldest.value);
    }
  }

  delete(id: string): void {
    const entry = this.entries.get(id);
    if (!entry) return;
    entry.key.fill(0);
    this.entries.delete(id);
  }

  /** Wipes expired entries; returns how many left. */
  sweep(): number {
    const now = this.now();
    let removed = 0;
    for (const [id, entry] of this.entries) {
      if (entry.expiresAt <= now) {
        this.delete(id);
        removed++;
      }
    }
    return removed;
  }

  clear(): void {
    for (const id of [...this.entries.keys()]) this.delete(id);
  }
}

/** A copy in its own (unpooled) allocation, so wiping it cannot touch shared memory. */
export function copyKey(source: Buffer): Buffer {
  const out = Buffer.alloc(source.length);
  source.copy(out);
  return out;
}
