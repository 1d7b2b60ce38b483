/**
 * A Vault-API-compatible HTTP server for tests where no real Vault runs (docs/contract.md#runtime-boundaries).
 * node:http only. Follows Vault's documented request/response shapes, status codes and
 * `{"errors":[…]}` bodies; enforces ACL policies parsed from the same HCL files as
 * `infra/vault/policies/`. State lives in memory; nothing is persisted.
 */
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { basename, join } from "node:path";
import { AppRoleEngine, type AuthResult, KubernetesEngine, type TokenEntry, TokenStore } from "./auth.js";
import { Acl, type Capability, DEFAULT_POLICY_HCL, PolicyParseError, type PolicyRule, parsePolicy } from "./policy.js";
import { TransitEngine } from "./transit.js";
import {
  badRequest,
  bool,
  type JsonObject,
  parseDurationSeconds,
  permissionDenied,
  str,
  strList,
  uuid,
  VaultHttpError,
} from "./util.js";

export interface VaultTestServerOptions {
  /** Default 0 (an ephemeral port on 127.0.0.1). */
  port?: number;
  host?: string;
  /** Root token id; random by default. */
  rootToken?: string;
  /** Policies by name (HCL text), written at start. */
  policies?: Record<string, string>;
  /** Every `*.hcl` in this folder is written as a policy named after the file. */
  policyDir?: string;
  /**
   * Engines enabled at start, at their default paths. Default: all three, as an init
   * script would leave them. `false` leaves them to be enabled through `sys/mounts` /
   * `sys/auth` like on a fresh dev Vault.
   */
  enable?: { transit?: boolean; approle?: boolean; kubernetes?: boolean };
  /** System default / max token TTL (Vault: 768h). */
  defaultTtl?: string | number;
  maxTtl?: string | number;
  initialized?: boolean;
  sealed?: boolean;
  standby?: boolean;
}

export type DownMode = false | "refuse" | "hang";

export interface RequestRecord {
  method: string;
  path: string;
  status: number;
}

export interface CreateTokenOptions {
  ttl?: string | number;
  renewable?: boolean;
  /** Leave Vault's `default` policy out (then lookup-self/renew-self are denied). */
  noDefaultPolicy?: boolean;
  maxTtl?: string | number;
}

export interface VaultTestServer {
  /** e.g. `http://127.0.0.1:41234` */
  readonly addr: string;
  readonly rootToken: string;
  /** The single Shamir share for `PUT sys/unseal`. */
  readonly unsealKey: string;
  /** A token carrying exactly these policies (plus `default` unless told otherwise). */
  createToken(policies: string[], options?: CreateTokenOptions): string;
  writePolicy(name: string, hcl: string): void;
  setSealed(sealed: boolean): void;
  setStandby(standby: boolean): void;
  /** `refuse`: stop listening (connection refused). `hang`: accept and never answer. */
  setDown(mode: DownMode): Promise<void>;
  revokeToken(token: string): void;
  /** Revokes every token but the root token (as if Vault lost its token store); returns how many. */
  revokeAllTokens(): number;
  expireToken(token: string): void;
  /** Method, path and status of every request answered (no headers, no bodies). */
  readonly requests: readonly RequestRecord[];
  stop(): Promise<void>;
}

const VERSION = "1.20.4+citadel-test";
const MAX_BODY = 32 * 1024 * 1024;

type AuthEngine = { type: "approle"; engine: AppRoleEngine } | { type: "kubernetes"; engine: KubernetesEngine };

interface Ctx {
  method: string;
  path: string;
  query: URLSearchParams;
  body: JsonObject;
  token: TokenEntry | undefined;
}

export function loadPolicyDir(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const file of readdirSync(dir)) {
    if (file.endsWith(".hcl")) out[basename(file, ".hcl")] = readFileSync(join(dir, file), "utf8");
  }
  return out;
}

function healthCode(query: URLSearchParams, name: string, fallback: number): number {
  const raw = query.get(name);
  if (raw === null || raw === "") return fallback;
  const n = Number.parseInt(raw, 10);
  if (!Number.isInteger(n) || String(n) !== raw) throw badRequest(`unable to parse ${name} parameter`);
  return n;
}

function queryBool(query: URLSearchParams, name: string): boolean {
  const raw = query.get(name);
  if (raw === null) return false;
  if (raw === "" || raw === "true" || raw === "1") return true;
  if (raw === "false" || raw === "0") return false;
  throw badRequest(`unable to parse ${name} parameter`);
}

export async function startVaultTestServer(options: VaultTestServerOptions = {}): Promise<VaultTestServer> {
  const defaultTtl = parseDurationSeconds(options.defaultTtl ?? "768h", "defaultTtl") ?? 2_764_800;
  const maxTtl = parseDurationSeconds(options.maxTtl ?? "768h", "maxTtl") ?? 2_764_800;
  const tokens = new TokenStore(defaultTtl, maxTtl);
  const rootToken = options.rootToken ?? `hvs.${randomBytes(18).toString("base64url")}`;
  tokens.issueRoot(rootToken);
  const unsealKey = randomBytes(32).toString("base64");
  const clusterId = uuid();

  const policyText = new Map<string, string>();
  const policyRules = new Map<string, PolicyRule[]>();
  const writePolicy = (name: string, hcl: string): void => {
    if (name === "root") throw badRequest("cannot update root policy");
    let rules: PolicyRule[];
    try {
      rules = parsePolicy(hcl);
    } catch (err) {
      if (err instanceof PolicyParseError) throw badRequest(`failed to parse policy: ${err.message}`);
      throw err;
    }
    policyText.set(name, hcl);
    policyRules.set(name, rules);
  };
  writePolicy("default", DEFAULT_POLICY_HCL);
  for (const [name, hcl] of Object.entries(options.policyDir ? loadPolicyDir(options.policyDir) : {})) {
    writePolicy(name, hcl);
  }
  for (const [name, hcl] of Object.entries(options.policies ?? {})) writePolicy(name, hcl);

  const secretMounts = new Map<string, TransitEngine>();
  const authMounts = new Map<string, AuthEngine>();
  const enableAuth = (path: string, type: string): void => {
    if (type === "approle") authMounts.set(path, { type, engine: new AppRoleEngine(path, tokens) });
    else if (type === "kubernetes") authMounts.set(path, { type, engine: new KubernetesEngine(path, tokens) });
    else throw badRequest(`plugin not found in the catalog: ${type}`);
  };
  const enable = options.enable ?? {};
  if (enable.transit ?? true) secretMounts.set("transit", new TransitEngine());
  if (enable.approle ?? true) enableAuth("approle", "approle");
  if (enable.kubernetes ?? true) enableAuth("kubernetes", "kubernetes");

  let initialized = options.initialized ?? true;
  let sealed = options.sealed ?? false;
  let standby = options.standby ?? false;
  let down: DownMode = false;
  const requests: RequestRecord[] = [];
  const sockets = new Set<Socket>();
  const hung = new Set<Socket>();

  const aclFor = (token: TokenEntry): Acl => {
    if (token.policies.includes("root")) return new Acl([], true);
    return new Acl(token.policies.map((p) => policyRules.get(p) ?? []));
  };

  const sealStatus = (): JsonObject => ({
    type: "shamir",
    initialized,
    sealed,
    t: 1,
    n: 1,
    progress: 0,
    nonce: "",
    version: VERSION,
    build_date: "2025-01-01T00:00:00Z",
    migration: false,
    cluster_name: "citadel-test",
    cluster_id: clusterId,
    recovery_seal: false,
    storage_type: "inmem",
  });

  const health = (ctx: Ctx): AuthResult => {
    // Every documented parameter is parsed first, so a bad value is a 400 in any state. DR
    // secondary (472) and performance standby (473) never apply to this server.
    const standbyOk = queryBool(ctx.query, "standbyok");
    queryBool(ctx.query, "perfstandbyok");
    const codes = {
      active: healthCode(ctx.query, "activecode", 200),
      standby: healthCode(ctx.query, "standbycode", 429),
      sealed: healthCode(ctx.query, "sealedcode", 503),
      uninit: healthCode(ctx.query, "uninitcode", 501),
    };
    healthCode(ctx.query, "drsecondarycode", 472);
    healthCode(ctx.query, "performancestandbycode", 473);
    let status: number;
    if (!initialized) status = codes.uninit;
    else if (sealed) status = codes.sealed;
    else if (standby && !standbyOk) status = codes.standby;
    else status = codes.active;
    return {
      status,
      body: {
        initialized,
        sealed,
        standby,
        performance_standby: false,
        replication_performance_mode: "disabled",
        replication_dr_mode: "disabled",
        server_time_utc: Math.floor(Date.now() / 1000),
        version: VERSION,
        cluster_name: "citadel-test",
        cluster_id: clusterId,
      },
    };
  };

  const requireCap = (ctx: Ctx, path: string, capability: Capability, sudo = false): void => {
    if (!ctx.token || !aclFor(ctx.token).allows(path, capability, sudo)) throw permissionDenied();
  };

  const writeCap = (ctx: Ctx, path: string, exists: boolean): void => {
    requireCap(ctx, path, exists ? "update" : "create");
  };

  const isWrite = (method: string): boolean => method === "POST" || method === "PUT";
  const readCapability = (ctx: Ctx): Capability =>
    ctx.method === "LIST" || (ctx.method === "GET" && queryBool(ctx.query, "list")) ? "list" : "read";

  const sys = (ctx: Ctx, rest: string): AuthResult => {
    const [head, a, b] = rest.split("/");
    if (head === "seal" && isWrite(ctx.method)) {
      requireCap(ctx, "sys/seal", "update", true);
      sealed = true;
      return { status: 204 };
    }
    if (head === "mounts") {
      if (a === undefined && ctx.method === "GET") {
        requireCap(ctx, "sys/mounts", "read");
        const mounts: JsonObject = {};
        for (const path of secretMounts.keys()) mounts[`${path}/`] = { type: "transit", description: "" };
        return { status: 200, body: { ...mounts, data: mounts } };
      }
      const mountPath = rest.slice("mounts/".length).replace(/\/$/, "");
      if (a && isWrite(ctx.method)) {
        writeCap(ctx, `sys/mounts/${mountPath}`, secretMounts.has(mountPath));
        if (secretMounts.has(mountPath) || authMounts.has(mountPath)) {
          throw badRequest(`path is already in use at ${mountPath}/`);
        }
        const type = str(ctx.body, "type");
        if (type !== "transit") throw badRequest(`plugin not found in the catalog: ${type ?? ""}`);
        secretMounts.set(mountPath, new TransitEngine());
        return { status: 204 };
      }
      if (a && ctx.method === "DELETE") {
        requireCap(ctx, `sys/mounts/${mountPath}`, "delete");
        secretMounts.delete(mountPath);
        return { status: 204 };
      }
    }
    if (head === "auth") {
      if (a === undefined && ctx.method === "GET") {
        requireCap(ctx, "sys/auth", "read");
        const mounts: JsonObject = { "token/": { type: "token", description: "token based credentials" } };
        for (const [path, m] of authMounts) mounts[`${path}/`] = { type: m.type, description: "" };
        return { status: 200, body: { ...mounts, data: mounts } };
      }
      const authPath = rest.slice("auth/".length).replace(/\/$/, "");
      if (a && isWrite(ctx.method)) {
        requireCap(ctx, `sys/auth/${authPath}`, "update", true);
        if (authMounts.has(authPath) || authPath === "token")
          throw badRequest(`path is already in use at auth/${authPath}/`);
        enableAuth(authPath, str(ctx.body, "type") ?? "");
        return { status: 204 };
      }
      if (a && ctx.method === "DELETE") {
        requireCap(ctx, `sys/auth/${authPath}`, "delete", true);
        authMounts.delete(authPath);
        return { status: 204 };
      }
    }
    const policyName = head === "policies" && a === "acl" ? b : head === "policy" ? a : undefined;
    if (policyName) {
      const aclPath = head === "policy" ? `sys/policy/${policyName}` : `sys/policies/acl/${policyName}`;
      if (isWrite(ctx.method)) {
        writeCap(ctx, aclPath, policyText.has(policyName));
        const text = str(ctx.body, "policy") ?? str(ctx.body, "rules");
        if (text === undefined) throw badRequest("'policy' parameter not supplied or empty");
        writePolicy(policyName, text);
        return { status: 204 };
      }
      if (ctx.method === "GET") {
        requireCap(ctx, aclPath, "read");
        const text = policyText.get(policyName);
        if (text === undefined) return { status: 404, body: { errors: [] } };
        return { status: 200, body: { name: policyName, rules: text, data: { name: policyName, policy: text } } };
      }
      if (ctx.method === "DELETE") {
        requireCap(ctx, aclPath, "delete");
        if (policyName === "default" || policyName === "root") throw badRequest(`cannot delete "${policyName}" policy`);
        policyText.delete(policyName);
        policyRules.delete(policyName);
        return { status: 204 };
      }
    }
    if (ctx.token) requireCap(ctx, `sys/${rest}`, readCapability(ctx));
    throw new VaultHttpError(404, [`no handler for route "sys/${rest}". route entry not found.`]);
  };

  const tokenRoutes = (ctx: Ctx, rest: string): AuthResult => {
    const self = ctx.token;
    if (!self) throw permissionDenied();
    const path = `auth/token/${rest}`;
    if (rest === "lookup-self" && (ctx.method === "GET" || isWrite(ctx.method))) {
      requireCap(ctx, path, ctx.method === "GET" ? "read" : "update");
      return { status: 200, body: { data: tokens.lookupData(self), auth: null, warnings: null } };
    }
    if (rest === "lookup" && isWrite(ctx.method)) {
      requireCap(ctx, path, "update");
      const other = tokens.lookup(str(ctx.body, "token"));
      if (!other) throw badRequest("bad token");
      return { status: 200, body: { data: tokens.lookupData(other), auth: null, warnings: null } };
    }
    if (rest === "renew-self" && isWrite(ctx.method)) {
      requireCap(ctx, path, "update");
      const { warnings } = tokens.renew(self, parseDurationSeconds(ctx.body.increment, "increment"));
      return {
        status: 200,
        body: { data: null, warnings: warnings.length > 0 ? warnings : null, auth: tokens.authBlock(self) },
      };
    }
    if (rest === "revoke-self" && isWrite(ctx.method)) {
      requireCap(ctx, path, "update");
      tokens.revoke(self.id);
      return { status: 204 };
    }
    if ((rest === "create" || rest === "create-orphan") && isWrite(ctx.method)) {
      requireCap(ctx, path, "update");
      const isRoot = self.policies.includes("root");
      const requested = strList(ctx.body, "policies") ?? self.policies.filter((p) => p !== "default");
      if (!isRoot) {
        const allowed = new Set(self.policies);
        if (requested.some((p) => !allowed.has(p))) throw badRequest("child policies must be subset of parent");
        if (str(ctx.body, "id")) throw badRequest("root or sudo privileges required to specify token id");
      }
      const child = tokens.issue({
        id: str(ctx.body, "id"),
        policies: requested,
        path: path,
        displayName: `token${str(ctx.body, "display_name") ? `-${str(ctx.body, "display_name")}` : ""}`,
        ttlSec: parseDurationSeconds(ctx.body.ttl ?? ctx.body.lease, "ttl"),
        maxTtlSec: parseDurationSeconds(ctx.body.explicit_max_ttl, "explicit_max_ttl"),
        period: parseDurationSeconds(ctx.body.period, "period"),
        renewable: bool(ctx.body, "renewable", true),
        noDefaultPolicy: bool(ctx.body, "no_default_policy", false),
        orphan: rest === "create-orphan" || bool(ctx.body, "no_parent", false),
        meta:
          ctx.body.meta && typeof ctx.body.meta === "object" && !Array.isArray(ctx.body.meta)
            ? Object.fromEntries(Object.entries(ctx.body.meta).map(([k, v]) => [k, String(v)]))
            : {},
      });
      return { status: 200, body: { request_id: uuid(), data: null, warnings: null, auth: tokens.authBlock(child) } };
    }
    if (rest === "revoke" && isWrite(ctx.method)) {
      requireCap(ctx, path, "update");
      const id = str(ctx.body, "token");
      if (id) tokens.revoke(id);
      return { status: 204 };
    }
    requireCap(ctx, path, readCapability(ctx));
    throw new VaultHttpError(405, ["unsupported operation"]);
  };

  const longestMount = <T>(mounts: Map<string, T>, path: string): [string, T] | undefined => {
    let best: [string, T] | undefined;
    for (const [mount, engine] of mounts) {
      if ((path === mount || path.startsWith(`${mount}/`)) && (!best || mount.length > best[0].length)) {
        best = [mount, engine];
      }
    }
    return best;
  };

  const dispatch = (ctx: Ctx): AuthResult => {
    const { path } = ctx;
    if (path === "sys/health" && (ctx.method === "GET" || ctx.method === "HEAD")) return health(ctx);
    if (path === "sys/seal-status" && ctx.method === "GET") return { status: 200, body: sealStatus() };
    if (path === "sys/unseal" && isWrite(ctx.method)) {
      if (bool(ctx.body, "reset", false)) return { status: 200, body: sealStatus() };
      if (str(ctx.body, "key") !== unsealKey) throw badRequest("Unseal failed, invalid key");
      sealed = false;
      return { status: 200, body: sealStatus() };
    }
    if (!initialized) throw new VaultHttpError(503, ["Vault is not initialized"]);
    if (sealed) throw new VaultHttpError(503, ["Vault is sealed"]);

    if (path.startsWith("auth/") && !path.startsWith("auth/token/")) {
      const found = longestMount(authMounts, path.slice("auth/".length));
      if (found) {
        const [mount, auth] = found;
        const subpath = path.slice(`auth/${mount}/`.length);
        if (!auth.engine.isLogin(subpath)) {
          if (ctx.method === "GET" || ctx.method === "LIST") requireCap(ctx, path, readCapability(ctx));
          else if (ctx.method === "DELETE") requireCap(ctx, path, "delete");
          else requireCap(ctx, path, auth.engine.writeCapability(subpath));
        }
        return auth.engine.handle(ctx.method === "LIST" ? "GET" : ctx.method, subpath, ctx.body);
      }
    }
    if (!ctx.token) throw permissionDenied();
    if (path.startsWith("sys/")) return sys(ctx, path.slice("sys/".length));
    if (path.startsWith("auth/token/")) return tokenRoutes(ctx, path.slice("auth/token/".length));

    const found = longestMount(secretMounts, path);
    if (!found) {
      requireCap(ctx, path, readCapability(ctx));
      throw new VaultHttpError(404, [`no handler for route "${path}". route entry not found.`]);
    }
    const [mount, engine] = found;
    const subpath = path.slice(mount.length + 1);
    const list = readCapability(ctx) === "list" && ctx.method !== "POST";
    if (ctx.method === "GET" || ctx.method === "LIST") requireCap(ctx, path, readCapability(ctx));
    else if (ctx.method === "DELETE") requireCap(ctx, path, "delete");
    else if (isWrite(ctx.method)) requireCap(ctx, path, engine.writeCapability(subpath));
    else throw new VaultHttpError(405, ["unsupported operation"]);
    return engine.handle(ctx.method === "LIST" ? "GET" : ctx.method, subpath, ctx.body, list);
  };

  const readBody = async (req: IncomingMessage): Promise<JsonObject> => {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req) {
      const buf = chunk as Buffer;
      size += buf.length;
      if (size > MAX_BODY) throw new VaultHttpError(413, ["http: request body too large"]);
      chunks.push(buf);
    }
    const text = Buffer.concat(chunks).toString("utf8").trim();
    if (text === "") return {};
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw badRequest(`failed to parse JSON input: ${(err as Error).message}`);
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      throw badRequest("failed to parse JSON input: expected an object");
    }
    return parsed as JsonObject;
  };

  const send = (res: ServerResponse, method: string, result: AuthResult): void => {
    const headers: Record<string, string> = { "Cache-Control": "no-store" };
    if (result.status === 204 || result.body === undefined) {
      res.writeHead(result.status === 200 ? 204 : result.status, headers);
      res.end();
      return;
    }
    const payload = JSON.stringify(result.body);
    headers["Content-Type"] = "application/json";
    headers["Content-Length"] = String(Buffer.byteLength(payload));
    res.writeHead(result.status, headers);
    res.end(method === "HEAD" ? undefined : payload);
  };

  const onRequest = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (down === "hang") {
      hung.add(req.socket); // stays open, unanswered, until setDown(false) or stop()
      return;
    }
    const url = new URL(req.url ?? "/", "http://vault.test");
    const method = (req.method ?? "GET").toUpperCase();
    const path = url.pathname.replace(/^\/v1\//, "").replace(/\/+$/, "");
    let result: AuthResult;
    try {
      if (!url.pathname.startsWith("/v1/")) throw new VaultHttpError(404, ["404 page not found"]);
      const body = method === "GET" || method === "HEAD" ? {} : await readBody(req);
      const header = req.headers["x-vault-token"];
      const bearer = req.headers.authorization?.replace(/^Bearer\s+/i, "");
      const tokenId = (Array.isArray(header) ? header[0] : header) ?? bearer;
      const token = tokens.lookup(tokenId);
      if (tokenId && !token && !path.startsWith("sys/health")) {
        // Vault answers an unknown or expired token with 403 even on login paths' neighbours;
        // login and unseal paths ignore the header.
        const open = path === "sys/seal-status" || path === "sys/unseal" || /^auth\/(?!token\/).+\/login$/.test(path);
        if (!open && !sealed) throw permissionDenied();
      }
      result = dispatch({ method, path, query: url.searchParams, body, token });
    } catch (err) {
      if (err instanceof VaultHttpError) result = { status: err.status, body: { errors: err.errors } };
      else result = { status: 500, body: { errors: ["1 error occurred:\n\t* internal error\n\n"] } };
    }
    requests.push({ method, path, status: result.status });
    send(res, method, result);
  };

  const server: Server = createServer((req, res) => {
    void onRequest(req, res);
  });
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  const host = options.host ?? "127.0.0.1";
  const listen = (port: number): Promise<number> =>
    new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => {
        server.off("error", reject);
        resolve((server.address() as AddressInfo).port);
      });
    });
  const port = await listen(options.port ?? 0);
  const closeListener = (): Promise<void> =>
    new Promise((resolve) => {
      if (!server.listening) {
        resolve();
        return;
      }
      server.close(() => resolve());
      for (const socket of sockets) socket.destroy();
    });

  return {
    addr: `http://${host}:${port}`,
    rootToken,
    unsealKey,
    requests,
    createToken(policies, opts = {}) {
      return tokens.issue({
        policies,
        path: "auth/token/create",
        displayName: "token",
        ttlSec: parseDurationSeconds(opts.ttl, "ttl"),
        maxTtlSec: parseDurationSeconds(opts.maxTtl, "maxTtl"),
        renewable: opts.renewable ?? true,
        noDefaultPolicy: opts.noDefaultPolicy ?? false,
      }).id;
    },
    writePolicy,
    setSealed(value) {
      sealed = value;
    },
    setStandby(value) {
      standby = value;
    },
    async setDown(mode) {
      const previous = down;
      down = mode;
      if (mode === "refuse") await closeListener();
      if (mode === false) {
        for (const socket of hung) socket.destroy(); // drop requests left hanging
        hung.clear();
        if (previous === "refuse" && !server.listening) await listen(port);
      }
    },
    revokeToken(token) {
      tokens.revoke(token);
    },
    revokeAllTokens() {
      return tokens.revokeAll(rootToken);
    },
    expireToken(token) {
      tokens.expire(token);
    },
    async stop() {
      down = false;
      await closeListener();
      initialized = false;
    },
  };
}
