/**
 * Tokens and the two login methods Citadel uses, after `api-docs/auth/token.mdx`,
 * `auth/approle.mdx` and `auth/kubernetes.mdx`. Tokens carry policies and TTLs that
 * really expire; renew-self extends up to the max TTL.
 */
import { createPublicKey, type KeyObject, verify as verifyRaw } from "node:crypto";
import {
  badRequest,
  bool,
  int,
  type Json,
  type JsonObject,
  nowSeconds,
  parseDurationSeconds,
  permissionDenied,
  randomId,
  str,
  strList,
  uuid,
  VaultHttpError,
} from "./util.js";

export interface TokenEntry {
  id: string;
  accessor: string;
  policies: string[];
  path: string;
  displayName: string;
  meta: Record<string, string>;
  issuedAt: number;
  creationTtl: number;
  /** epoch ms; null = never expires (root). */
  expiresAt: number | null;
  maxExpiresAt: number | null;
  renewable: boolean;
  explicitMaxTtl: number;
  period: number;
  orphan: boolean;
}

export interface IssueOptions {
  policies: string[];
  path: string;
  displayName: string;
  ttlSec?: number;
  maxTtlSec?: number;
  period?: number;
  renewable?: boolean;
  meta?: Record<string, string>;
  orphan?: boolean;
  noDefaultPolicy?: boolean;
  id?: string;
}

export class TokenStore {
  private readonly tokens = new Map<string, TokenEntry>();

  constructor(
    private readonly defaultTtlSec: number,
    private readonly maxTtlSec: number,
  ) {}

  issueRoot(id: string): TokenEntry {
    const entry: TokenEntry = {
      id,
      accessor: randomId(),
      policies: ["root"],
      path: "auth/token/root",
      displayName: "root",
      meta: {},
      issuedAt: Date.now(),
      creationTtl: 0,
      expiresAt: null,
      maxExpiresAt: null,
      renewable: false,
      explicitMaxTtl: 0,
      period: 0,
      orphan: true,
    };
    this.tokens.set(id, entry);
    return entry;
  }

  issue(options: IssueOptions): TokenEntry {
    const now = Date.now();
    const root = options.policies.includes("root");
    const maxTtl = Math.min(options.maxTtlSec || this.maxTtlSec, this.maxTtlSec);
    const ttl = options.period || Math.min(options.ttlSec || this.defaultTtlSec, maxTtl);
    const policies = [
      ...new Set([...(options.noDefaultPolicy || root ? [] : ["default"]), ...options.policies]),
    ].sort();
    const entry: TokenEntry = {
      id: options.id ?? randomId("hvs."),
      accessor: randomId(),
      policies,
      path: options.path,
      displayName: options.displayName,
      meta: options.meta ?? {},
      issuedAt: now,
      creationTtl: root && !options.ttlSec ? 0 : ttl,
      expiresAt: root && !options.ttlSec ? null : now + ttl * 1000,
      maxExpiresAt: root && !options.ttlSec ? null : options.period ? null : now + maxTtl * 1000,
      renewable: options.renewable ?? true,
      explicitMaxTtl: options.maxTtlSec ?? 0,
      period: options.period ?? 0,
      orphan: options.orphan ?? false,
    };
    this.tokens.set(entry.id, entry);
    return entry;
  }

  lookup(id: string | undefined): TokenEntry | undefined {
    if (!id) return undefined;
    const entry = this.tokens.get(id);
    if (!entry) return undefined;
    if (entry.expiresAt !== null && entry.expiresAt <= Date.now()) {
      this.tokens.delete(id);
      return undefined;
    }
    return entry;
  }

  revoke(id: string): boolean {
    return this.tokens.delete(id);
  }

  /** Revokes every token except `keep` (test control). */
  revokeAll(keep: string): number {
    let n = 0;
    for (const id of [...this.tokens.keys()]) {
      if (id !== keep && this.tokens.delete(id)) n++;
    }
    return n;
  }

  /** Forces a token to expire now (test control). */
  expire(id: string): void {
    const entry = this.tokens.get(id);
    if (entry) entry.expiresAt = Date.now() - 1;
  }

  ttlOf(entry: TokenEntry): number {
    return entry.expiresAt === null ? 0 : Math.max(0, Math.round((entry.expiresAt - Date.now()) / 1000));
  }

  renew(entry: TokenEntry, incrementSec: number | undefined): { warnings: string[] } {
    if (!entry.renewable || entry.expiresAt === null) throw badRequest("lease is not renewable");
    const now = Date.now();
    const wanted = entry.period || incrementSec || entry.creationTtl;
    let ttl = wanted;
    const warnings: string[] = [];
    if (entry.maxExpiresAt !== null) {
      const remaining = Math.max(0, Math.floor((entry.maxExpiresAt - now) / 1000));
      if (wanted > remaining) {
        ttl = remaining;
        warnings.push(
          `TTL of "${wanted}s" exceeded the effective max_ttl of "${remaining}s"; TTL value is capped accordingly`,
        );
      }
    }
    entry.expiresAt = now + ttl * 1000;
    return { warnings };
  }

  authBlock(entry: TokenEntry): JsonObject {
    return {
      client_token: entry.id,
      accessor: entry.accessor,
      policies: entry.policies,
      token_policies: entry.policies,
      metadata: entry.meta,
      lease_duration: this.ttlOf(entry),
      renewable: entry.renewable,
      entity_id: "",
      token_type: "service",
      orphan: entry.orphan,
      mfa_requirement: null,
      num_uses: 0,
    };
  }

  lookupData(entry: TokenEntry): JsonObject {
    return {
      accessor: entry.accessor,
      creation_time: Math.floor(entry.issuedAt / 1000),
      creation_ttl: entry.creationTtl,
      display_name: entry.displayName,
      entity_id: "",
      expire_time: entry.expiresAt === null ? null : new Date(entry.expiresAt).toISOString(),
      explicit_max_ttl: entry.explicitMaxTtl,
      id: entry.id,
      issue_time: new Date(entry.issuedAt).toISOString(),
      meta: entry.meta,
      num_uses: 0,
      orphan: entry.orphan,
      path: entry.path,
      policies: entry.policies,
      renewable: entry.renewable,
      ttl: this.ttlOf(entry),
      type: "service",
    };
  }
}

interface TokenFields {
  policies: string[];
  ttl?: number;
  maxTtl?: number;
  period?: number;
}

/** Vault's shared `tokenfields` role parameters (`token_policies`, `token_ttl`, … and their old names). */
function tokenFields(body: JsonObject, previous?: TokenFields): TokenFields {
  return {
    policies: strList(body, "token_policies", "policies") ?? previous?.policies ?? [],
    ttl: parseDurationSeconds(body.token_ttl ?? body.ttl, "token_ttl") ?? previous?.ttl,
    maxTtl: parseDurationSeconds(body.token_max_ttl ?? body.max_ttl, "token_max_ttl") ?? previous?.maxTtl,
    period: parseDurationSeconds(body.token_period ?? body.period, "token_period") ?? previous?.period,
  };
}

function roleView(fields: TokenFields): JsonObject {
  return {
    token_policies: fields.policies,
    policies: fields.policies,
    token_ttl: fields.ttl ?? 0,
    token_max_ttl: fields.maxTtl ?? 0,
    token_period: fields.period ?? 0,
  };
}

export interface AuthResult {
  status: number;
  body?: JsonObject;
}

const data = (d: JsonObject): AuthResult => ({ status: 200, body: { data: d, auth: null, warnings: null } });

function loginResult(tokens: TokenStore, entry: TokenEntry): AuthResult {
  return {
    status: 200,
    body: {
      request_id: uuid(),
      lease_id: "",
      renewable: false,
      lease_duration: 0,
      data: null,
      auth: tokens.authBlock(entry),
    },
  };
}

interface AppRole extends TokenFields {
  name: string;
  roleId: string;
  bindSecretId: boolean;
  secretIdTtl: number;
  secretIdNumUses: number;
}

interface SecretId {
  role: string;
  accessor: string;
  expiresAt: number | null;
  usesLeft: number | null;
  metadata: Record<string, string>;
}

/** What every login engine shares: its mount, the token store, and role bookkeeping. */
abstract class LoginEngine<Role> {
  protected readonly roles = new Map<string, Role>();

  constructor(
    protected readonly mount: string,
    protected readonly tokens: TokenStore,
  ) {}

  isLogin(subpath: string): boolean {
    return subpath === "login";
  }

  /** Writing `role/<name>` creates it when new (Vault's create vs update capability). */
  writeCapability(subpath: string): "create" | "update" {
    const [head, name, rest] = subpath.split("/");
    return head === "role" && name && rest === undefined && !this.roles.has(name) ? "create" : "update";
  }
}

export class AppRoleEngine extends LoginEngine<AppRole> {
  private readonly secretIds = new Map<string, SecretId>();

  handle(method: string, subpath: string, body: JsonObject): AuthResult {
    const [head, name, action, extra] = subpath.split("/");
    const write = method === "POST" || method === "PUT";
    if (head === "login" && write) return this.login(body);
    if (head === "role" && name) {
      if (action === undefined) {
        if (write) return this.writeRole(name, body);
        if (method === "GET") return this.readRole(name);
        if (method === "DELETE") {
          this.roles.delete(name);
          return { status: 204 };
        }
      }
      const role = this.roles.get(name);
      if (!role) throw badRequest(`role "${name}" does not exist`);
      if (action === "role-id" && extra === undefined) {
        if (method === "GET") return data({ role_id: role.roleId });
        if (write) {
          role.roleId = str(body, "role_id") ?? role.roleId;
          return { status: 204 };
        }
      }
      if ((action === "secret-id" || action === "custom-secret-id") && extra === undefined && write) {
        return this.generateSecretId(role, action === "custom-secret-id" ? str(body, "secret_id") : undefined, body);
      }
    }
    throw new VaultHttpError(405, ["unsupported operation"]);
  }

  private writeRole(name: string, body: JsonObject): AuthResult {
    const previous = this.roles.get(name);
    const role: AppRole = {
      name,
      roleId: previous?.roleId ?? uuid(),
      bindSecretId: bool(body, "bind_secret_id", previous?.bindSecretId ?? true),
      secretIdTtl: parseDurationSeconds(body.secret_id_ttl, "secret_id_ttl") ?? previous?.secretIdTtl ?? 0,
      secretIdNumUses: int(body, "secret_id_num_uses", previous?.secretIdNumUses ?? 0),
      ...tokenFields(body, previous),
    };
    this.roles.set(name, role);
    return { status: 204 };
  }

  private readRole(name: string): AuthResult {
    const role = this.roles.get(name);
    if (!role) return { status: 404, body: { errors: [] } };
    return data({
      ...roleView(role),
      bind_secret_id: role.bindSecretId,
      secret_id_ttl: role.secretIdTtl,
      secret_id_num_uses: role.secretIdNumUses,
      secret_id_bound_cidrs: [],
    });
  }

  private generateSecretId(role: AppRole, custom: string | undefined, body: JsonObject): AuthResult {
    const ttl = parseDurationSeconds(body.ttl, "ttl") ?? role.secretIdTtl;
    const uses = int(body, "num_uses", role.secretIdNumUses);
    const secretId = custom ?? uuid();
    const accessor = uuid();
    let metadata: Record<string, string> = {};
    const rawMeta = str(body, "metadata");
    if (rawMeta) {
      const parsed: unknown = JSON.parse(rawMeta);
      if (typeof parsed === "object" && parsed !== null) {
        metadata = Object.fromEntries(Object.entries(parsed).map(([k, v]) => [k, String(v)]));
      }
    }
    this.secretIds.set(secretId, {
      role: role.name,
      accessor,
      expiresAt: ttl > 0 ? Date.now() + ttl * 1000 : null,
      usesLeft: uses > 0 ? uses : null,
      metadata,
    });
    return data({ secret_id: secretId, secret_id_accessor: accessor, secret_id_ttl: ttl, secret_id_num_uses: uses });
  }

  private login(body: JsonObject): AuthResult {
    const roleId = str(body, "role_id");
    if (!roleId) throw badRequest("missing role_id");
    const role = [...this.roles.values()].find((r) => r.roleId === roleId);
    if (!role) throw badRequest("invalid role or secret ID");
    if (role.bindSecretId) {
      const secretId = str(body, "secret_id");
      if (!secretId) throw badRequest("missing secret_id");
      const entry = this.secretIds.get(secretId);
      if (!entry || entry.role !== role.name || (entry.expiresAt !== null && entry.expiresAt <= Date.now())) {
        throw badRequest("invalid role or secret ID");
      }
      if (entry.usesLeft !== null) {
        entry.usesLeft -= 1;
        if (entry.usesLeft <= 0) this.secretIds.delete(secretId);
      }
    }
    const token = this.tokens.issue({
      policies: role.policies,
      path: `auth/${this.mount}/login`,
      displayName: this.mount.replace(/\/$/, ""),
      ttlSec: role.ttl,
      maxTtlSec: role.maxTtl,
      period: role.period,
      meta: { role_name: role.name },
    });
    return loginResult(this.tokens, token);
  }
}

interface K8sRole extends TokenFields {
  names: string[];
  namespaces: string[];
  audience?: string;
}

/** Reads a JWT's claims; verifies the signature against `pem_keys` when those are configured. */
function decodeJwt(jwt: string, keys: KeyObject[]): Record<string, Json> {
  const parts = jwt.split(".");
  if (parts.length !== 3) throw badRequest("not a compact JWS");
  const [h, p, s] = parts as [string, string, string];
  let header: Record<string, Json>;
  let claims: Record<string, Json>;
  try {
    header = JSON.parse(Buffer.from(h, "base64url").toString("utf8")) as Record<string, Json>;
    claims = JSON.parse(Buffer.from(p, "base64url").toString("utf8")) as Record<string, Json>;
  } catch {
    throw badRequest("failed to parse JWT");
  }
  if (keys.length > 0) {
    const signed = Buffer.from(`${h}.${p}`);
    const sig = Buffer.from(s, "base64url");
    const alg = header.alg;
    const ok = keys.some((key) => {
      if (alg === "RS256") return verifyRaw("sha256", signed, key, sig);
      if (alg === "ES256") return verifyRaw("sha256", signed, { key, dsaEncoding: "ieee-p1363" }, sig);
      if (alg === "EdDSA") return verifyRaw(null, signed, key, sig);
      return false;
    });
    if (!ok) throw permissionDenied();
  }
  const exp = claims.exp;
  if (typeof exp === "number" && exp < nowSeconds()) throw permissionDenied();
  return claims;
}

function serviceAccountOf(claims: Record<string, Json>): { name: string; namespace: string; uid: string } {
  const projected = claims["kubernetes.io"];
  if (projected && typeof projected === "object" && !Array.isArray(projected)) {
    const sa = projected.serviceaccount;
    if (sa && typeof sa === "object" && !Array.isArray(sa)) {
      return { name: String(sa.name ?? ""), namespace: String(projected.namespace ?? ""), uid: String(sa.uid ?? "") };
    }
  }
  return {
    name: String(claims["kubernetes.io/serviceaccount/service-account.name"] ?? ""),
    namespace: String(claims["kubernetes.io/serviceaccount/namespace"] ?? ""),
    uid: String(claims["kubernetes.io/serviceaccount/service-account.uid"] ?? ""),
  };
}

/**
 * Kubernetes auth. Without a cluster there is no TokenReview: a JWT is accepted when its
 * service-account claims match the role's bindings and, if `pem_keys` are configured,
 * its signature verifies against one of them.
 */
export class KubernetesEngine extends LoginEngine<K8sRole> {
  private pemKeys: KeyObject[] = [];
  private host = "";

  handle(method: string, subpath: string, body: JsonObject): AuthResult {
    const [head, name, rest] = subpath.split("/");
    const write = method === "POST" || method === "PUT";
    if (head === "login" && write) return this.login(body);
    if (head === "config" && name === undefined) {
      if (write) {
        this.host = str(body, "kubernetes_host") ?? this.host;
        const pems = strList(body, "pem_keys");
        if (pems) this.pemKeys = pems.map((pem) => createPublicKey(pem));
        return { status: 204 };
      }
      if (method === "GET") return data({ kubernetes_host: this.host, pem_keys: this.pemKeys.map(() => "(set)") });
    }
    if (head === "role" && name && rest === undefined) {
      if (write) {
        const previous = this.roles.get(name);
        const names = strList(body, "bound_service_account_names") ?? previous?.names;
        const namespaces = strList(body, "bound_service_account_namespaces") ?? previous?.namespaces;
        if (!names?.length || !namespaces?.length) {
          throw badRequest('"bound_service_account_names" and "bound_service_account_namespaces" can not be empty');
        }
        this.roles.set(name, { names, namespaces, audience: str(body, "audience"), ...tokenFields(body, previous) });
        return { status: 204 };
      }
      if (method === "GET") {
        const role = this.roles.get(name);
        if (!role) return { status: 404, body: { errors: [] } };
        return data({
          ...roleView(role),
          bound_service_account_names: role.names,
          bound_service_account_namespaces: role.namespaces,
          audience: role.audience ?? "",
        });
      }
      if (method === "DELETE") {
        this.roles.delete(name);
        return { status: 204 };
      }
    }
    throw new VaultHttpError(405, ["unsupported operation"]);
  }

  private login(body: JsonObject): AuthResult {
    const roleName = str(body, "role");
    const jwt = str(body, "jwt");
    if (!roleName) throw badRequest("missing role");
    if (!jwt) throw badRequest("missing jwt");
    const role = this.roles.get(roleName);
    if (!role) throw badRequest(`invalid role name "${roleName}"`);
    const claims = decodeJwt(jwt, this.pemKeys);
    const sa = serviceAccountOf(claims);
    if (!role.names.includes("*") && !role.names.includes(sa.name)) {
      throw new VaultHttpError(403, ["service account name not authorized"]);
    }
    if (!role.namespaces.includes("*") && !role.namespaces.includes(sa.namespace)) {
      throw new VaultHttpError(403, ["namespace not authorized"]);
    }
    if (
      role.audience &&
      claims.aud !== role.audience &&
      !(Array.isArray(claims.aud) && claims.aud.includes(role.audience))
    ) {
      throw permissionDenied();
    }
    const token = this.tokens.issue({
      policies: role.policies,
      path: `auth/${this.mount}/login`,
      displayName: `${this.mount}-${sa.namespace}-${sa.name}`,
      ttlSec: role.ttl,
      maxTtlSec: role.maxTtl,
      period: role.period,
      meta: {
        role: roleName,
        service_account_name: sa.name,
        service_account_namespace: sa.namespace,
        service_account_uid: sa.uid,
      },
    });
    return loginResult(this.tokens, token);
  }
}
