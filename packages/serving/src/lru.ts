/** What one worker process (one GPU) may hold loaded at once. */
export interface LoadBound {
  /** Sessions held at once (at least 1). */
  maxModels: number;
  /** Sum of the held models' plaintext sizes; unbounded when absent. */
  maxBytes?: number;
}

/**
 * Which loaded models stay and which go when another is needed: the least recently
 * used first, never one that `busy` says is in use. Pure bookkeeping (no timers, no
 * I/O): the model host asks it, then closes the sessions it names.
 */
export class LruBound<K> {
  /** Map order is recency: first is least recently used. The value is the model's size. */
  private readonly held = new Map<K, number>();
  private heldBytes = 0;

  constructor(readonly bound: LoadBound) {
    if (!Number.isInteger(bound.maxModels) || bound.maxModels < 1) throw new RangeError("maxModels must be >= 1");
    if (bound.maxBytes !== undefined && !(bound.maxBytes > 0)) throw new RangeError("maxBytes must be > 0");
  }

  get size(): number {
    return this.held.size;
  }

  get bytes(): number {
    return this.heldBytes;
  }

  has(key: K): boolean {
    return this.held.has(key);
  }

  /** Least recently used first. */
  keys(): K[] {
    return [...this.held.keys()];
  }

  /** Marks `key` as just used. */
  touch(key: K): void {
    const b = this.held.get(key);
    if (b === undefined) return;
    this.held.delete(key);
    this.held.set(key, b);
  }

  /**
   * Makes room for `key` (a model of `bytes`). Returns the keys to evict, least
   * recently used first, skipping busy ones; they are removed and `key` is added as
   * the most recently used. Returns null, changing nothing, when the bound cannot be
   * met without evicting a busy model. A model larger than the whole byte budget
   * still fits once nothing else is held (otherwise it could never be served).
   */
  admit(key: K, bytes: number, busy: (key: K) => boolean): K[] | null {
    if (this.held.has(key)) throw new Error("admit: key is already held");
    const { maxModels, maxBytes } = this.bound;
    const fits = (n: number, b: number) =>
      n < maxModels && (maxBytes === undefined || n === 0 || b + bytes <= maxBytes);
    let n = this.held.size;
    let b = this.heldBytes;
    const victims: K[] = [];
    for (const [k, kb] of this.held) {
      if (fits(n, b)) break;
      if (busy(k)) continue;
      victims.push(k);
      n--;
      b -= kb;
    }
    if (!fits(n, b)) return null;
    for (const v of victims) this.remove(v);
    this.held.set(key, bytes);
    this.heldBytes += bytes;
    return victims;
  }

  /** Forgets `key` (unloaded for another reason, or its load failed). */
  remove(key: K): boolean {
    const b = this.held.get(key);
    if (b === undefined) return false;
    this.held.delete(key);
    this.heldBytes -= b;
    return true;
  }
}
