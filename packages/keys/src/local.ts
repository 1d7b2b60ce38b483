import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createPrivateKey,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  sign,
} from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { CitadelError } from "@citadel/contracts";
import type { DataKey, KeyProvider, ManifestSigner, SignerPublicKey } from "./provider.js";

/**
 * The dev keyring: master keys per key name (versioned, like Transit keys), an
 * ed25519 signing key and the audit key. A file with mode 0600; the local provider
 * refuses a looser one.
 */
interface Keyring {
  format: "citadel.keyring/v1";
  masterKeys: Record<string, { version: number; key: string }[]>;
  signing: { privateKeyPem: string; publicKey: string }[];
  /** The dev audit key (32 random bytes, base64); absent in keyrings made before audit keys. */
  audit?: { key: string };
}

const WRAPPED_RE = /^local:v(\d+):([A-Za-z0-9+/=]+)$/;

export function keyIdFor(publicKey: string): string {
  return `local:${createHash("sha256").update(publicKey).digest("hex").slice(0, 16)}`;
}

function newSigningKey(): Keyring["signing"][number] {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const der = publicKey.export({ format: "der", type: "spki" });
  return {
    privateKeyPem: privateKey.export({ format: "pem", type: "pkcs8" }).toString(),
    publicKey: der.subarray(der.length - 32).toString("base64"),
  };
}

/** Creates a keyring at `file` (mode 0600) unless one exists; returns whether it created one. */
export function initKeyring(file: string, keyNames: readonly string[] = ["citadel-models"]): boolean {
  if (existsSync(file)) return false;
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const ring: Keyring = {
    format: "citadel.keyring/v1",
    masterKeys: Object.fromEntries(keyNames.map((n) => [n, [{ version: 1, key: randomBytes(32).toString("base64") }]])),
    signing: [newSigningKey()],
    audit: { key: randomBytes(32).toString("base64") },
  };
  writeKeyring(file, ring);
  return true;
}

function writeKeyring(file: string, ring: Keyring): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(ring, null, 2)}\n`, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}

function readKeyring(file: string): Keyring {
  if (!existsSync(file)) {
    throw new CitadelError("KEY_UNWRAP_FAILED", `no keyring at ${file}: run \`citadel keys init\``);
  }
  const mode = statSync(file).mode & 0o777;
  if (mode & 0o077) {
    throw new CitadelError(
      "KEY_UNWRAP_FAILED",
      `keyring ${file} is readable by others (mode ${mode.toString(8)}); chmod 600 it`,
    );
  }
  const ring = JSON.parse(readFileSync(file, "utf8")) as Keyring;
  if (ring.format !== "citadel.keyring/v1")
    throw new CitadelError("KEY_UNWRAP_FAILED", `keyring ${file} has an unknown format`);
  return ring;
}

/**
 * Emulates Vault Transit's datakey/decrypt/rewrap/rotate from the keyring, so the
 * demo and unit tests run the same sealing code as production.
 */
export class LocalKeyProvider implements KeyProvider, ManifestSigner {
  readonly kind = "local" as const;
  private ring: Keyring;

  constructor(private readonly file: string) {
    this.ring = readKeyring(file);
  }

  private versions(keyName: string) {
    const v = this.ring.masterKeys[keyName];
    if (!v || v.length === 0)
      throw new CitadelError("KEY_UNWRAP_FAILED", `no master key named '${keyName}' in the keyring`);
    return v;
  }

  private wrap(keyName: string, plaintext: Buffer): string {
    const latest = this.versions(keyName).at(-1);
    if (!latest) throw new CitadelError("KEY_UNWRAP_FAILED", `no master key named '${keyName}'`);
    const master = Buffer.from(latest.key, "base64");
    const iv = randomBytes(12);
    const c = createCipheriv("aes-256-gcm", master, iv);
    c.setAAD(Buffer.from(keyName));
    const ct = Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
    master.fill(0);
    return `local:v${latest.version}:${Buffer.concat([iv, ct]).toString("base64")}`;
  }

  async generateDataKey(keyName: string): Promise<DataKey> {
    const plaintext = randomBytes(32);
    return { plaintext, wrapped: this.wrap(keyName, plaintext) };
  }

  async unwrapDataKey(keyName: string, wrapped: string): Promise<Buffer> {
    const m = WRAPPED_RE.exec(wrapped);
    if (!m) throw new CitadelError("KEY_UNWRAP_FAILED", "wrapped key is not in local:vN: form");
    const entry = this.versions(keyName).find((k) => k.version === Number(m[1]));
    if (!entry) throw new CitadelError("KEY_UNWRAP_FAILED", `master key '${keyName}' has no version ${m[1]}`);
    const raw = Buffer.from(m[2] ?? "", "base64");
    const master = Buffer.from(entry.key, "base64");
    try {
      const d = createDecipheriv("aes-256-gcm", master, raw.subarray(0, 12));
      d.setAAD(Buffer.from(keyName));
      d.setAuthTag(raw.subarray(raw.length - 16));
      return Buffer.concat([d.update(raw.subarray(12, raw.length - 16)), d.final()]);
    } catch (err) {
      throw new CitadelError(
        "KEY_UNWRAP_FAILED",
        "the wrapped data key does not decrypt under the keyring",
        undefined,
        { cause: err },
      );
    } finally {
      master.fill(0);
    }
  }

  async rewrapDataKey(keyName: string, wrapped: string): Promise<string> {
    const key = await this.unwrapDataKey(keyName, wrapped);
    try {
      return this.wrap(keyName, key);
    } finally {
      key.fill(0);
    }
  }

  async rotateKey(keyName: string): Promise<number> {
    const ring = readKeyring(this.file);
    const versions = ring.masterKeys[keyName] ?? [];
    const next = (versions.at(-1)?.version ?? 0) + 1;
    versions.push({ version: next, key: randomBytes(32).toString("base64") });
    ring.masterKeys[keyName] = versions;
    writeKeyring(this.file, ring);
    this.ring = ring;
    return next;
  }

  /** Adds a new signing key; old ones stay so their signatures keep verifying. */
  rotateSigningKey(): SignerPublicKey {
    const ring = readKeyring(this.file);
    const k = newSigningKey();
    ring.signing.push(k);
    writeKeyring(this.file, ring);
    this.ring = ring;
    return { keyId: keyIdFor(k.publicKey), publicKey: k.publicKey };
  }

  async sign(payload: Buffer): Promise<{ keyId: string; signature: string }> {
    const k = this.ring.signing.at(-1);
    if (!k) throw new CitadelError("SIGNATURE_MISSING", "the keyring has no signing key");
    const signature = sign(null, payload, createPrivateKey(k.privateKeyPem)).toString("base64");
    return { keyId: keyIdFor(k.publicKey), signature };
  }

  /**
   * The dev audit key (every dev process shares it; production gives each role its own
   * file). A keyring made before audit keys derives one from its first signing key,
   * which never changes, so old keyrings keep working without being rewritten.
   */
  auditSecret(): Buffer {
    if (this.ring.audit) return Buffer.from(this.ring.audit.key, "base64");
    const first = this.ring.signing[0];
    if (!first)
      throw new CitadelError("KEY_UNWRAP_FAILED", "the keyring has no signing key to derive an audit key from");
    const ikm = createPrivateKey(first.privateKeyPem).export({ format: "der", type: "pkcs8" });
    try {
      return Buffer.from(hkdfSync("sha256", ikm, "citadel-keyring", "citadel.audit.key/v1", 32));
    } finally {
      ikm.fill(0);
    }
  }

  /**
   * The dev webhook key (production gives the API and the CLI a WEBHOOK_KEY_FILE):
   * derived from the dev audit key under a label of its own, so the two never coincide.
   */
  webhookSecret(): Buffer {
    const audit = this.auditSecret();
    try {
      return Buffer.from(hkdfSync("sha256", audit, "citadel-keyring", "citadel.webhook.key/v1", 32));
    } finally {
      audit.fill(0);
    }
  }

  async publicKeys(): Promise<SignerPublicKey[]> {
    return this.ring.signing.map((k) => ({ keyId: keyIdFor(k.publicKey), publicKey: k.publicKey }));
  }

  async close(): Promise<void> {}
}
