import { createHmac, timingSafeEqual } from "node:crypto";
import { inspect } from "node:util";

/** Bytes an audit key must have at least: HMAC-SHA256 gains nothing past its block's worth, loses below 32. */
export const AUDIT_KEY_MIN_BYTES = 32;

/**
 * An audit key: the secret that MACs every record and head of one role (api, worker,
 * cli). It lives outside Redis (a file, or the dev keyring), so a Redis writer cannot
 * recompute a chain. The secret never leaves this object: it is not enumerable, not
 * serialised and not printed; records name it by `kid`, a fingerprint that says
 * nothing about the secret.
 */
export class AuditKey {
  readonly kid: string;
  readonly #secret: Buffer;

  /**
   * @param secret copied; the caller may wipe its buffer afterwards.
   * @param role when set, a verifier accepts this key only on writers named `<role>:…`,
   *   so one role's key cannot vouch for another role's records.
   */
  constructor(
    secret: Uint8Array,
    readonly role?: string,
  ) {
    if (secret.length < AUDIT_KEY_MIN_BYTES)
      throw new Error(`an audit key needs at least ${AUDIT_KEY_MIN_BYTES} bytes, got ${secret.length}`);
    this.#secret = Buffer.from(secret);
    this.kid = createHmac("sha256", this.#secret).update("citadel.audit.kid/v1").digest("hex").slice(0, 16);
  }

  /** A key from a secret the caller is done with: the secret is copied, then wiped. */
  static adopt(secret: Buffer, role?: string): AuditKey {
    try {
      return new AuditKey(secret, role);
    } finally {
      secret.fill(0);
    }
  }

  /** HMAC-SHA256 (hex) over the parts, JSON-encoded so no two part lists share an encoding. */
  mac(...parts: string[]): string {
    return createHmac("sha256", this.#secret).update(JSON.stringify(parts)).digest("hex");
  }

  /** Compares a claimed MAC with ours in constant time. */
  verify(mac: string, ...parts: string[]): boolean {
    const want = Buffer.from(this.mac(...parts), "hex");
    const got = Buffer.from(mac, "hex");
    return got.length === want.length && timingSafeEqual(got, want);
  }

  /** Whether this key may vouch for records of `writer`. */
  covers(writer: string): boolean {
    return this.role === undefined || writer.startsWith(`${this.role}:`);
  }

  toJSON(): { kid: string; role?: string } {
    return { kid: this.kid, ...(this.role ? { role: this.role } : {}) };
  }

  [inspect.custom](): string {
    return `AuditKey(${this.kid}${this.role ? `, ${this.role}` : ""})`;
  }
}

/** The keys a verifier may use, by kid. The same secret given twice is kept once (the first role wins). */
export class AuditKeySet {
  private readonly byKid = new Map<string, AuditKey>();

  constructor(keys: Iterable<AuditKey>) {
    for (const k of keys) if (!this.byKid.has(k.kid)) this.byKid.set(k.kid, k);
  }

  get(kid: unknown): AuditKey | undefined {
    return typeof kid === "string" ? this.byKid.get(kid) : undefined;
  }

  get size(): number {
    return this.byKid.size;
  }
}
