/**
 * The Transit secrets engine, after `website/content/api-docs/secret/transit.mdx`:
 * keys (aes128/256-gcm96, ed25519) with versions, datakey, encrypt/decrypt/rewrap,
 * sign/verify. Real crypto: AES-GCM per key version with ciphertexts
 * `vault:vN:base64(nonce||ct||tag)`, ed25519 signatures `vault:vN:base64(sig)`.
 */
import {
  createCipheriv,
  createDecipheriv,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  sign as signRaw,
  verify as verifyRaw,
} from "node:crypto";
import { badRequest, bool, decodeBase64, int, type JsonObject, str, VaultHttpError } from "./util.js";

export type TransitKeyType = "aes256-gcm96" | "aes128-gcm96" | "ed25519";
const KEY_TYPES: readonly string[] = ["aes256-gcm96", "aes128-gcm96", "ed25519"];

interface KeyVersion {
  created: Date;
  aes?: Buffer;
  ed25519?: { privateKey: KeyObject; publicKey: KeyObject; publicKeyB64: string };
}

interface TransitKey {
  name: string;
  type: TransitKeyType;
  versions: Map<number, KeyVersion>;
  latestVersion: number;
  minDecryptionVersion: number;
  minEncryptionVersion: number;
  deletionAllowed: boolean;
  exportable: boolean;
}

export interface EngineResult {
  status: number;
  body?: JsonObject;
}

const CIPHERTEXT = /^vault:v(\d+):(.*)$/;

function newVersion(type: TransitKeyType): KeyVersion {
  if (type === "ed25519") {
    const { privateKey, publicKey } = generateKeyPairSync("ed25519");
    // The raw key is the SPKI's last 32 bytes. Not a JWK export: on Node 20 that deadlocks
    // when a young collection lands inside it (vault-server.test.ts says how).
    const spki = publicKey.export({ format: "der", type: "spki" });
    const raw = spki.subarray(spki.length - 32);
    return { created: new Date(), ed25519: { privateKey, publicKey, publicKeyB64: raw.toString("base64") } };
  }
  return { created: new Date(), aes: randomBytes(type === "aes128-gcm96" ? 16 : 32) };
}

const ok = (data: JsonObject | null, extra: JsonObject = {}): EngineResult => ({
  status: 200,
  body: {
    request_id: "",
    lease_id: "",
    renewable: false,
    lease_duration: 0,
    data,
    wrap_info: null,
    warnings: null,
    auth: null,
    ...extra,
  },
});

export class TransitEngine {
  private readonly keys = new Map<string, TransitKey>();

  /** The capability a write needs: Vault's existence check makes upserts `create`. */
  writeCapability(subpath: string): "create" | "update" {
    const [head, name, rest] = subpath.split("/");
    if (head === "keys" && name && rest === undefined && !this.keys.has(name)) return "create";
    if (head === "encrypt" && name && !this.keys.has(name)) return "create";
    return "update";
  }

  handle(method: string, subpath: string, body: JsonObject, list: boolean): EngineResult {
    const parts = subpath.split("/");
    const [head, a, b, c] = parts;
    if (head === "keys" && (a === undefined || a === "") && list) return this.listKeys();
    if (head === "keys" && a) {
      if (b === undefined) {
        if (method === "GET") return this.readKey(a);
        if (method === "POST" || method === "PUT") return this.createKey(a, body);
        if (method === "DELETE") return this.deleteKey(a);
      }
      if (b === "rotate" && c === undefined && (method === "POST" || method === "PUT")) return this.rotate(a);
      if (b === "config" && c === undefined && (method === "POST" || method === "PUT")) return this.config(a, body);
    }
    if (method === "POST" || method === "PUT") {
      if (head === "datakey" && a && b && c === undefined) return this.datakey(a, b, body);
      if (head === "encrypt" && a && b === undefined) return this.encrypt(a, body);
      if (head === "decrypt" && a && b === undefined) return this.decrypt(a, body);
      if (head === "rewrap" && a && b === undefined) return this.rewrap(a, body);
      if (head === "sign" && a && c === undefined) return this.sign(a, body);
      if (head === "verify" && a && c === undefined) return this.verify(a, body);
    }
    throw new VaultHttpError(404, [`unsupported path`]);
  }

  private key(name: string): TransitKey {
    const key = this.keys.get(name);
    if (!key) throw badRequest("encryption key not found");
    return key;
  }

  private listKeys(): EngineResult {
    if (this.keys.size === 0) return { status: 404, body: { errors: [] } };
    return ok({ keys: [...this.keys.keys()].sort() });
  }

  private format(key: TransitKey): JsonObject {
    const keys: JsonObject = {};
    for (const [version, v] of key.versions) {
      keys[String(version)] = v.ed25519
        ? { name: "ed25519", public_key: v.ed25519.publicKeyB64, creation_time: v.created.toISOString() }
        : Math.floor(v.created.getTime() / 1000);
    }
    const signing = key.type === "ed25519";
    return {
      name: key.name,
      type: key.type,
      derived: false,
      deletion_allowed: key.deletionAllowed,
      exportable: key.exportable,
      allow_plaintext_backup: false,
      keys,
      latest_version: key.latestVersion,
      min_available_version: 0,
      min_decryption_version: key.minDecryptionVersion,
      min_encryption_version: key.minEncryptionVersion,
      supports_encryption: !signing,
      supports_decryption: !signing,
      supports_derivation: true,
      supports_signing: signing,
      auto_rotate_period: 0,
      imported_key: false,
    };
  }

  private readKey(name: string): EngineResult {
    const key = this.keys.get(name);
    if (!key) return { status: 404, body: { errors: [] } };
    return ok(this.format(key));
  }

  private createKey(name: string, body: JsonObject): EngineResult {
    const existing = this.keys.get(name);
    if (existing) return ok(this.format(existing));
    const type = str(body, "type") ?? "aes256-gcm96";
    if (!KEY_TYPES.includes(type)) throw badRequest(`unknown key type: ${type}`);
    if (bool(body, "derived", false) || bool(body, "convergent_encryption", false)) {
      throw badRequest("derived keys are not supported by the Citadel test server");
    }
    const key: TransitKey = {
      name,
      type: type as TransitKeyType,
      versions: new Map([[1, newVersion(type as TransitKeyType)]]),
      latestVersion: 1,
      minDecryptionVersion: 1,
      minEncryptionVersion: 0,
      deletionAllowed: false,
      exportable: bool(body, "exportable", false),
    };
    this.keys.set(name, key);
    return ok(this.format(key));
  }

  private deleteKey(name: string): EngineResult {
    const key = this.keys.get(name);
    if (!key) return { status: 204 };
    if (!key.deletionAllowed) throw badRequest("deletion is not allowed for this key");
    for (const v of key.versions.values()) v.aes?.fill(0);
    this.keys.delete(name);
    return { status: 204 };
  }

  private rotate(name: string): EngineResult {
    const key = this.key(name);
    key.latestVersion += 1;
    key.versions.set(key.latestVersion, newVersion(key.type));
    return ok(this.format(key));
  }

  private config(name: string, body: JsonObject): EngineResult {
    const key = this.key(name);
    const minDec = int(body, "min_decryption_version", key.minDecryptionVersion);
    const minEnc = int(body, "min_encryption_version", key.minEncryptionVersion);
    if (minDec < 1 || minDec > key.latestVersion) throw badRequest("cannot set min decryption version above latest");
    if (minEnc !== 0 && (minEnc < minDec || minEnc > key.latestVersion)) {
      throw badRequest("min encryption version must be 0 or between min decryption version and latest version");
    }
    key.minDecryptionVersion = minDec;
    key.minEncryptionVersion = minEnc;
    key.deletionAllowed = bool(body, "deletion_allowed", key.deletionAllowed);
    return ok(this.format(key));
  }

  private encryptionVersion(key: TransitKey, body: JsonObject): number {
    const requested = int(body, "key_version", 0);
    const version = requested === 0 ? key.latestVersion : requested;
    if (version > key.latestVersion || !key.versions.has(version)) throw badRequest("invalid key version");
    if (key.minEncryptionVersion > 0 && version < key.minEncryptionVersion) {
      throw badRequest("requested version for encryption is less than the minimum encryption key version");
    }
    return version;
  }

  private seal(key: TransitKey, version: number, plaintext: Buffer): string {
    const aes = key.versions.get(version)?.aes;
    if (!aes) throw badRequest(`key type ${key.type} does not support encryption`);
    const nonce = randomBytes(12);
    const cipher = createCipheriv(aes.length === 16 ? "aes-128-gcm" : "aes-256-gcm", aes, nonce);
    const ct = Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
    return `vault:v${version}:${Buffer.concat([nonce, ct]).toString("base64")}`;
  }

  private open(key: TransitKey, ciphertext: string | undefined): { plaintext: Buffer; version: number } {
    if (ciphertext === undefined || ciphertext === "") throw badRequest("missing ciphertext to decrypt");
    if (key.type === "ed25519") throw badRequest(`key type ${key.type} does not support decryption`);
    const match = CIPHERTEXT.exec(ciphertext);
    if (!match) throw badRequest("invalid ciphertext: no prefix");
    const version = Number.parseInt(match[1] ?? "", 10);
    const payload = match[2] ?? "";
    if (!Number.isInteger(version) || version < 1)
      throw badRequest("invalid ciphertext: version number could not be decoded");
    if (version < key.minDecryptionVersion) {
      throw badRequest("ciphertext or signature version is disallowed by policy (too old)");
    }
    const aes = key.versions.get(version)?.aes;
    if (!aes) throw badRequest("invalid key version");
    const raw = decodeBase64(payload, "ciphertext");
    if (raw.length < 12 + 16) throw badRequest("invalid ciphertext: ciphertext too short");
    try {
      const decipher = createDecipheriv(aes.length === 16 ? "aes-128-gcm" : "aes-256-gcm", aes, raw.subarray(0, 12));
      decipher.setAuthTag(raw.subarray(raw.length - 16));
      const plaintext = Buffer.concat([decipher.update(raw.subarray(12, raw.length - 16)), decipher.final()]);
      return { plaintext, version };
    } catch {
      throw badRequest("cipher: message authentication failed");
    }
  }

  private datakey(type: string, name: string, body: JsonObject): EngineResult {
    if (type !== "plaintext" && type !== "wrapped") throw badRequest(`invalid path '${type}'`);
    const key = this.key(name);
    const bits = int(body, "bits", 256);
    if (bits !== 128 && bits !== 256 && bits !== 512) throw badRequest(`invalid bits length`);
    const version = this.encryptionVersion(key, body);
    const dataKey = randomBytes(bits / 8);
    const ciphertext = this.seal(key, version, dataKey);
    const data: JsonObject = { ciphertext, key_version: version };
    if (type === "plaintext") data.plaintext = dataKey.toString("base64");
    dataKey.fill(0);
    return ok(data);
  }

  private encrypt(name: string, body: JsonObject): EngineResult {
    const plaintext = decodeBase64(str(body, "plaintext"), "plaintext");
    if (!this.keys.has(name)) this.createKey(name, { type: str(body, "type") ?? "aes256-gcm96" });
    const key = this.key(name);
    const version = this.encryptionVersion(key, body);
    return ok({ ciphertext: this.seal(key, version, plaintext), key_version: version });
  }

  private decrypt(name: string, body: JsonObject): EngineResult {
    const { plaintext } = this.open(this.key(name), str(body, "ciphertext"));
    return ok({ plaintext: plaintext.toString("base64") });
  }

  private rewrap(name: string, body: JsonObject): EngineResult {
    const key = this.key(name);
    const { plaintext } = this.open(key, str(body, "ciphertext"));
    const version = this.encryptionVersion(key, body);
    const ciphertext = this.seal(key, version, plaintext);
    plaintext.fill(0);
    return ok({ ciphertext, key_version: version });
  }

  private signingVersion(key: TransitKey, version: number): NonNullable<KeyVersion["ed25519"]> {
    if (key.type !== "ed25519") throw badRequest(`key type ${key.type} does not support signing`);
    const ed = key.versions.get(version)?.ed25519;
    if (!ed) throw badRequest("invalid key version");
    return ed;
  }

  private sign(name: string, body: JsonObject): EngineResult {
    const key = this.key(name);
    const input = decodeBase64(str(body, "input") ?? "", "input");
    if (bool(body, "prehashed", false)) throw badRequest("ed25519 does not support prehashed input");
    const version = this.encryptionVersion(key, body);
    const signature = signRaw(null, input, this.signingVersion(key, version).privateKey);
    return ok({ signature: `vault:v${version}:${signature.toString("base64")}`, key_version: version });
  }

  private verify(name: string, body: JsonObject): EngineResult {
    const key = this.key(name);
    const input = decodeBase64(str(body, "input") ?? "", "input");
    const signature = str(body, "signature");
    if (!signature) throw badRequest("signature or hmac must be set");
    const match = CIPHERTEXT.exec(signature);
    if (!match) throw badRequest("invalid signature: no prefix");
    const version = Number.parseInt(match[1] ?? "", 10);
    if (version < key.minDecryptionVersion) {
      throw badRequest("ciphertext or signature version is disallowed by policy (too old)");
    }
    if (version > key.latestVersion) throw badRequest("invalid key version");
    const ed = this.signingVersion(key, version);
    const valid = verifyRaw(null, input, ed.publicKey, decodeBase64(match[2], "signature"));
    return ok({ valid });
  }
}
