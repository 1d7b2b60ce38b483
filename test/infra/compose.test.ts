import { spawn } from "node:child_process";
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { freePort } from "@citadel/cli/fleet";
import { keys } from "@citadel/queue";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  canRead,
  filesUnder,
  type Layout,
  roleIds,
  runBootstrap,
  userOf,
  volumeMounts,
  wrapperEnv,
} from "./compose-secrets.js";
import {
  arr,
  at,
  composeSubstitute,
  expectSaneTtls,
  interpolate,
  isObj,
  isPinnedImage,
  loadCompose,
  type Obj,
  QUOTA_FACTOR,
  QUOTA_FACTOR_TEXT,
  read,
  redisBytes,
  redisConf,
  renderCompose,
  str,
} from "./support.js";

const compose = loadCompose();
const services = (isObj(compose.services) ? compose.services : {}) as Record<string, Obj>;
const ONE_SHOT = new Set(["secrets-init", "vault-init", "publisher", "cli"]);

function dependsOn(svc: string): Record<string, string> {
  const d = at(services[svc], "depends_on");
  const out: Record<string, string> = {};
  if (isObj(d)) for (const [k, v] of Object.entries(d)) out[k] = str(at(v, "condition"));
  return out;
}

describe("docker-compose.yml", () => {
  it("has the whole fleet", () => {
    for (const s of ["redis", "vault", "vault-init", "publisher", "api", "worker", "worker-gpu", "secrets-init"]) {
      expect(Object.keys(services), s).toContain(s);
    }
  });

  it("pins every image to an explicit version (no latest, no untagged)", () => {
    for (const [name, svc] of Object.entries(services)) {
      const image = interpolate(str(svc.image));
      expect(image, `${name} image`).not.toBe("");
      expect(isPinnedImage(image), `${name}: ${image}`).toBe(true);
    }
  });

  it("runs every service as a non-root user, read-only, without capabilities", () => {
    for (const [name, svc] of Object.entries(services)) {
      const user = str(svc.user);
      expect(user, `${name} user`).toMatch(/^\d+(:\d+)?$/);
      const uid = Number(user.split(":")[0]);
      expect(uid, `${name} uid`).toBeGreaterThan(0);
      expect(svc.privileged ?? false, `${name} privileged`).toBe(false);
      expect(svc.read_only, `${name} read_only`).toBe(true);
      expect(arr(svc.cap_drop), `${name} cap_drop`).toContain("ALL");
      expect(arr(svc.cap_add), `${name} cap_add`).toEqual([]);
      expect(arr(svc.security_opt).map(str), `${name} no-new-privileges`).toContain("no-new-privileges:true");
      expect(svc.network_mode === "host", `${name} host network`).toBe(false);
    }
  });

  it("health-checks every long-running service", () => {
    for (const [name, svc] of Object.entries(services)) {
      if (ONE_SHOT.has(name)) {
        expect(svc.restart, `${name} is one-shot`).toBe("no");
        continue;
      }
      expect(at(svc, "healthcheck", "test"), `${name} healthcheck`).toBeDefined();
    }
  });

  it("orders start-up on health and completion, not just start", () => {
    expect(dependsOn("redis")["secrets-init"]).toBe("service_completed_successfully");
    expect(dependsOn("vault-init").vault).toBe("service_healthy");
    expect(dependsOn("publisher")).toMatchObject({
      redis: "service_healthy",
      "vault-init": "service_completed_successfully",
    });
    // Grafana reads its admin password from the secrets secrets-init writes.
    expect(dependsOn("grafana")["secrets-init"]).toBe("service_completed_successfully");
    for (const s of ["api", "worker", "worker-gpu"]) {
      expect(dependsOn(s), s).toMatchObject({
        redis: "service_healthy",
        "vault-init": "service_completed_successfully",
        publisher: "service_completed_successfully",
      });
    }
  });

  it("runs infra/vault/init.sh from the vault-init service", () => {
    const vi = services["vault-init"] ?? {};
    expect(arr(vi.volumes).map(str)).toContain("./infra/vault:/opt/citadel/vault:ro");
    expect(read("infra/compose/vault-bootstrap.sh")).toContain("/opt/citadel/vault/init.sh");
    expect(str(at(services.vault, "image"))).toMatch(/^hashicorp\/vault:\d+\.\d+\.\d+$/);
    expect(arr(at(services.vault, "command")).map(str)).toContain("server");
  });

  it("hands AppRole credentials from init.sh to the services as files, each role into its own volume", () => {
    const env = (at(services["vault-init"], "environment") as Obj | undefined) ?? {};
    expect(env.CITADEL_APPROLE_OUT_DIR, "no shared AppRole directory").toBeUndefined();
    const bootstrap = read("infra/compose/vault-bootstrap.sh");
    expect(bootstrap).toContain("citadel-worker:$root/worker/approle:$CITADEL_ID_WORKER");
    expect(bootstrap).toContain("citadel-publisher:$root/publisher/approle:$CITADEL_ID_PUBLISHER");
    const wrapper = read("infra/compose/with-secrets.sh");
    expect(wrapper).toContain('"$dir/approle/$role.role-id"');
    expect(wrapper).toContain('VAULT_SECRET_ID_FILE="$dir/approle/$role.secret-id"');
    expect(at(services.worker, "environment", "CITADEL_VAULT_ROLE")).toBe("citadel-worker");
    expect(at(services.publisher, "environment", "CITADEL_VAULT_ROLE")).toBe("citadel-publisher");
    // the API gets no Vault identity
    expect(at(services.api, "environment", "CITADEL_VAULT_ROLE")).toBeUndefined();
    expect(at(services.api, "environment", "VAULT_AUTH")).toBeUndefined();
  });

  it("publishes the sample models with a one-shot service", () => {
    const cmd = arr(at(services.publisher, "command")).map(str).join(" ");
    expect(cmd).toContain("apps/cli/bin/citadel.mjs demo --publish-only");
    expect(at(services.publisher, "restart")).toBe("no");
  });

  it("puts the GPU worker under the gpu profile with an NVIDIA device reservation", () => {
    const gpu = services["worker-gpu"] ?? {};
    expect(arr(gpu.profiles)).toEqual(["gpu"]);
    const devices = arr(at(gpu, "deploy", "resources", "reservations", "devices"));
    expect(devices).toContainEqual({ driver: "nvidia", count: 1, capabilities: ["gpu"] });
    expect(at(gpu, "environment", "REQUIRE_GPU")).toBe("true");
    expect(str(at(gpu, "build", "dockerfile"))).toBe("infra/docker/Dockerfile.gpu");
    expect(at(services.worker, "profiles")).toBeUndefined();
    expect(at(services.worker, "environment", "EXECUTION_PROVIDERS")).toBe("cpu");
  });

  it("configures Redis with AOF and noeviction", () => {
    const redis = services.redis ?? {};
    expect(arr(redis.command).map(str)).toEqual(["redis-server", "/usr/local/etc/redis/redis.conf"]);
    expect(arr(redis.volumes).map(str)).toContain("./infra/redis/redis.conf:/usr/local/etc/redis/redis.conf:ro");
    const conf = redisConf(read("infra/redis/redis.conf"));
    expect(conf.get("appendonly")).toBe("yes");
    expect(conf.get("appendfsync")).toBe("everysec");
    expect(conf.get("maxmemory-policy")).toBe("noeviction");
    expect(conf.get("aclfile")).toBe("/run/citadel/redis-users.acl");
    expect(conf.has("requirepass")).toBe(false);
  });

  it("exposes only the API (and local-only dashboards) to the host", () => {
    for (const [name, svc] of Object.entries(services)) {
      const ports = arr(svc.ports).map(str);
      if (name === "api") expect(ports.map(interpolate)).toEqual(["127.0.0.1:8080:8080"]);
      else if (name === "prometheus" || name === "grafana") for (const p of ports) expect(p).toMatch(/^127\.0\.0\.1:/);
      else expect(ports, name).toEqual([]);
    }
    expect(at(compose, "networks", "backend", "internal")).toBe(true);
  });

  it("passes the conventional environment to the app services (Vault settings only where Vault is used)", () => {
    for (const s of ["api", "worker", "worker-gpu", "publisher", "cli"]) {
      const env = (at(services[s], "environment") as Obj | undefined) ?? {};
      expect(env.CITADEL_PREFIX, s).toBe("{citadel}");
      expect(env.MODEL_STORE_DIR, s).toBe("/var/lib/citadel/models");
      expect(env.NODE_ENV, s).toBe("production");
      if (s === "api") continue;
      expect(env.KEY_PROVIDER, s).toBe("vault");
      expect(str(env.VAULT_ADDR), s).toMatch(/^http:\/\/vault:8200$/);
      expect(env.VAULT_AUTH, s).toBe("approle");
    }
    expect(at(services.api, "environment", "BOARD_ADMIN_PASSWORD_FILE")).toMatch(/^\/run\/citadel\//);
    // secret volumes are read-only wherever they are not generated
    for (const s of ["api", "worker", "worker-gpu", "publisher", "cli", "redis", "grafana"]) {
      const mounts = arr(at(services[s], "volumes")).map(str);
      const secrets = mounts.filter((m) => m.split(":")[1] === "/run/citadel");
      expect(secrets.length, `${s} mounts one secrets volume at /run/citadel`).toBe(1);
      expect(secrets[0], s).toMatch(/^citadel-secrets-[a-z]+:\/run\/citadel:ro$/);
    }
    const grace = Number(str(at(services.worker, "stop_grace_period")).replace(/s$/, ""));
    expect(grace * 1000).toBeGreaterThan(Number(at(services.worker, "environment", "SHUTDOWN_TIMEOUT_MS")));
  });
});

/** Which role each service runs as: one uid and one gid per role, never shared. */
const ROLE_OF: Record<string, string> = {
  "secrets-init": "bootstrap",
  "vault-init": "bootstrap",
  api: "api",
  worker: "worker",
  "worker-gpu": "worker",
  publisher: "publisher",
  cli: "publisher",
  redis: "redis",
  vault: "vault",
  grafana: "grafana",
  prometheus: "prometheus",
};

/** The secret files each role may read, under its /run/citadel; nothing else. */
const OWN_SECRETS: Record<string, string[]> = {
  api: ["audit-key", "board-admin-password", "board-ops-password", "redis-password", "webhook-key"],
  worker: ["approle/citadel-worker.role-id", "approle/citadel-worker.secret-id", "audit-key", "redis-password"],
  publisher: [
    "approle/citadel-publisher.role-id",
    "approle/citadel-publisher.secret-id",
    "audit-key",
    "redis-password",
  ],
  redis: ["redis-health-password", "redis-users.acl"],
  grafana: ["grafana-admin-password"],
  vault: [],
  prometheus: [],
};
/** Secret files a service reads beyond its role's own: the ad-hoc CLI's copy of the webhook key. */
const SERVICE_SECRETS: Record<string, string[]> = { cli: ["/run/citadel-cli/webhook-key"] };
/** The volumes named for one service, and the role whose gid their files carry. */
const VOLUME_ROLE: Record<string, string> = { cli: "publisher" };
const APP_SERVICES = Object.keys(ROLE_OF).filter((s) => ROLE_OF[s] !== "bootstrap");

describe("docker-compose.yml: one uid, one gid and one secrets volume per role", () => {
  it("maps every service to a role", () => {
    expect(Object.keys(services).sort()).toEqual(Object.keys(ROLE_OF).sort());
  });

  it("gives each role its own uid and gid, the same for every service of the role", () => {
    const byRole = new Map<string, string>();
    for (const [svc, role] of Object.entries(ROLE_OF)) {
      const u = userOf(svc);
      const seen = byRole.get(role);
      if (seen) expect(`${u.uid}:${u.gid}`, `${svc} runs as role ${role}`).toBe(seen);
      else byRole.set(role, `${u.uid}:${u.gid}`);
    }
    const uids = [...byRole.values()].map((u) => u.split(":")[0]);
    const gids = [...byRole.values()].map((u) => u.split(":")[1]);
    expect(new Set(uids).size, `uids ${[...byRole].join(", ")}`).toBe(byRole.size);
    expect(new Set(gids).size, `gids ${[...byRole].join(", ")}`).toBe(byRole.size);
    // infra/compose/roles.env is what gen-secrets.mjs and vault-bootstrap.sh chgrp to.
    const ids = roleIds();
    for (const role of ["bootstrap", "api", "worker", "publisher", "redis", "grafana"]) {
      expect(byRole.get(role), role).toBe(`${ids[role]}:${ids[role]}`);
    }
  });

  it("adds the bootstrap services only to the groups of the roles whose files they write", () => {
    const ids = roleIds();
    const groups = (svc: string) => arr(at(services[svc], "group_add")).map((g) => Number(str(g) || g));
    expect(groups("secrets-init").sort()).toEqual(
      [ids.api, ids.worker, ids.publisher, ids.redis, ids.grafana].map(Number).sort(),
    );
    expect(groups("vault-init").sort()).toEqual([ids.worker, ids.publisher].map(Number).sort());
    for (const svc of APP_SERVICES) expect(at(services[svc], "group_add"), svc).toBeUndefined();
  });

  it("mounts no secrets volume into two roles, and the Vault keys into the bootstrap only", () => {
    const rolesOf = new Map<string, Set<string>>();
    for (const svc of Object.keys(ROLE_OF)) {
      for (const m of volumeMounts(svc)) {
        if (!/secret|vault-keys/.test(m.volume)) continue;
        const set = rolesOf.get(m.volume) ?? new Set();
        set.add(ROLE_OF[svc] ?? svc);
        rolesOf.set(m.volume, set);
      }
    }
    for (const [volume, roles] of rolesOf) {
      const apps = [...roles].filter((r) => r !== "bootstrap");
      expect(apps.length, `${volume} is mounted by ${[...roles].join(", ")}`).toBeLessThanOrEqual(1);
    }
    expect([...(rolesOf.get("citadel-vault-keys") ?? [])]).toEqual(["bootstrap"]);
    expect(at(compose, "volumes", "citadel-secrets"), "the old shared volume is gone").toBeUndefined();
  });
});

describe("compose secrets, generated and bootstrapped for real (gen-secrets.mjs, vault-bootstrap.sh, init.sh)", () => {
  let layout: Layout;
  beforeAll(() => {
    // The scripts chgrp files to each role's gid, which only root (or a member of
    // every group: secrets-init's group_add) may do.
    expect(process.getuid?.(), "these tests create files owned by other groups: run as root").toBe(0);
    layout = runBootstrap();
  });
  afterAll(() => {
    if (layout) rmSync(layout.dir, { recursive: true, force: true });
  });

  it("lets every service read exactly its own secret files and no other role's", () => {
    const bootstrapUid = roleIds().bootstrap ?? -1;
    for (const svc of APP_SERVICES) {
      const who = userOf(svc);
      const readable: string[] = [];
      for (const m of volumeMounts(svc)) {
        const dir = layout.volumes.get(m.volume);
        if (!dir) continue; // not a volume the bootstrap writes (models, data)
        for (const f of filesUnder(dir)) if (canRead(dir, f, who, bootstrapUid)) readable.push(`${m.target}/${f}`);
      }
      const own = [
        ...(OWN_SECRETS[ROLE_OF[svc] ?? ""] ?? []).map((f) => `/run/citadel/${f}`),
        ...(SERVICE_SECRETS[svc] ?? []),
      ];
      expect(readable.sort(), svc).toEqual(own.sort());
    }
  });

  it("writes every secret file 0400 or 0440, group = its role's gid, and nothing else", () => {
    const ids = roleIds();
    const roleOfVolume = (v: string) => {
      const name = v.replace(/^citadel-secrets-/, "");
      return VOLUME_ROLE[name] ?? name;
    };
    for (const [volume, dir] of layout.volumes) {
      for (const f of filesUnder(dir)) {
        const st = statSync(path.join(dir, f));
        const where = `${volume}:${f}`;
        if (volume === "citadel-vault-keys") {
          expect(st.mode & 0o777, where).toBe(0o400);
          continue;
        }
        expect(st.mode & 0o777, where).toBe(0o440);
        expect(st.gid, where).toBe(ids[roleOfVolume(volume)]);
      }
    }
  });

  it("keeps the unseal key in the bootstrap's volume only, mode 0400", () => {
    const keys = layout.volumes.get("citadel-vault-keys") ?? "";
    expect(filesUnder(keys)).toEqual(["vault-unseal-key"]);
    expect(readFileSync(path.join(keys, "vault-unseal-key"), "utf8")).toBe(layout.vault().unsealKey);
  });

  it("revokes the root token when the bootstrap ends, and never writes it to disk", () => {
    const vault = layout.vault();
    expect(vault.roots.length).toBe(1);
    const root = vault.roots[0] ?? "";
    // init.sh configured Vault with it, then it was revoked.
    expect(vault.calls.some((c) => c.args[0] === "policy" && c.token === root)).toBe(true);
    expect(vault.calls.some((c) => c.args.join(" ") === "token revoke -self" && c.token === root && c.code === 0)).toBe(
      true,
    );
    expect(vault.tokens, "no root token is still valid").not.toContain(root);
    for (const f of filesUnder(layout.dir).filter((x) => !x.endsWith("vault-state.json"))) {
      expect(readFileSync(path.join(layout.dir, f), "utf8"), f).not.toContain(root);
    }
  });

  it("on a restart unseals, mints a fresh root token from the unseal key, and revokes it too", () => {
    const before = layout.vault();
    const secretIds = filesUnder(layout.dir)
      .filter((f) => f.endsWith(".secret-id"))
      .map((f) => readFileSync(path.join(layout.dir, f), "utf8"));
    const r = layout.bootstrap({ restartVault: true });
    expect(r.status, r.output).toBe(0);
    const after = layout.vault();
    expect(after.sealed).toBe(false);
    expect(after.roots.length).toBe(before.roots.length + 1);
    const minted = after.roots.at(-1) ?? "";
    expect(after.calls.some((c) => c.args.includes("generate-root") && c.args.includes("-init"))).toBe(true);
    expect(after.calls.some((c) => c.args[0] === "policy" && c.token === minted)).toBe(true);
    expect(after.tokens).not.toContain(minted);
    // AppRole secret-ids are kept across restarts (the services hold them).
    const again = filesUnder(layout.dir)
      .filter((f) => f.endsWith(".secret-id"))
      .map((f) => readFileSync(path.join(layout.dir, f), "utf8"));
    expect(again).toEqual(secretIds);
  });

  it("revokes the root token even when init.sh fails", () => {
    const r = layout.bootstrap({ failOn: "policy write" });
    expect(r.status, r.output).not.toBe(0);
    const vault = layout.vault();
    const minted = vault.roots.at(-1) ?? "";
    expect(vault.tokens).not.toContain(minted);
    expect(r.output).toContain("root token revoked");
  });

  it("takes over a root token file an older bootstrap left, uses it once, revokes it and deletes it", () => {
    const keys = layout.volumes.get("citadel-vault-keys") ?? "";
    const state = JSON.parse(readFileSync(path.join(layout.dir, "vault-state.json"), "utf8")) as {
      tokens: string[];
      roots: string[];
    };
    const legacy = "legacy-root-token-for-test";
    state.tokens.push(legacy);
    state.roots.push(legacy);
    writeFileSync(path.join(layout.dir, "vault-state.json"), JSON.stringify(state));
    writeFileSync(path.join(keys, "vault-root-token"), legacy, { mode: 0o600 });
    const r = layout.bootstrap();
    expect(r.status, r.output).toBe(0);
    const vault = layout.vault();
    expect(vault.tokens).not.toContain(legacy);
    expect(vault.calls.some((c) => c.args[0] === "policy" && c.token === legacy)).toBe(true);
    expect(existsSync(path.join(keys, "vault-root-token"))).toBe(false);
  });

  it("hands each app service an environment its own env schema accepts, with Vault only for Vault users", async () => {
    const { ApiEnv } = await import("@citadel/api");
    const { WorkerEnv } = await import("@citadel/worker");
    const { CliEnv } = await import("@citadel/cli/context");
    const secretsDir = (svc: string) =>
      layout.volumes.get(volumeMounts(svc).find((m) => m.target === "/run/citadel")?.volume ?? "") ?? "";
    const api = wrapperEnv("api", secretsDir("api"));
    expect(Object.keys(api).filter((k) => /^VAULT_|^KEY_PROVIDER$|^CITADEL_VAULT_ROLE$/.test(k))).toEqual([]);
    const parsed = ApiEnv.safeParse(api);
    expect(parsed.error?.issues ?? [], "API env").toEqual([]);
    expect(new URL(api.REDIS_URL ?? "").username).toBe("api");
    for (const svc of ["worker", "worker-gpu"]) {
      const env = wrapperEnv(svc, secretsDir(svc));
      expect(WorkerEnv.safeParse(env).error?.issues ?? [], svc).toEqual([]);
      expect(env.VAULT_ROLE_ID, svc).toBe("role-id-of-citadel-worker");
      expect(new URL(env.REDIS_URL ?? "").username, svc).toBe("worker");
    }
    for (const svc of ["publisher", "cli"]) {
      const env = wrapperEnv(svc, secretsDir(svc));
      expect(CliEnv.safeParse(env).error?.issues ?? [], svc).toEqual([]);
      expect(env.VAULT_ROLE_ID, svc).toBe("role-id-of-citadel-publisher");
      expect(new URL(env.REDIS_URL ?? "").username, svc).toBe("publisher");
    }
    // Each process that writes audit records reads its own role's key.
    for (const svc of ["api", "worker", "worker-gpu", "publisher", "cli"]) {
      const file = str(at(services[svc], "environment", "AUDIT_KEY_FILE"));
      expect(file, svc).toBe("/run/citadel/audit-key");
      const key = readFileSync(path.join(secretsDir(svc), "audit-key"), "utf8");
      expect(Buffer.from(key, "base64").length, svc).toBe(32);
    }
    const keys = new Set(
      ["api", "worker", "publisher"].map((s) => readFileSync(path.join(secretsDir(s), "audit-key"))),
    );
    expect(keys.size, "one audit key per role").toBe(3);
    // Webhooks are on as shipped: the API signs with its key, and the ad-hoc CLI (publisher
    // role) holds the same key to print a tenant's secret, in a volume of its own; no other
    // service has it (the publisher one-shot included).
    const mountedAt = (svc: string, target: string) =>
      layout.volumes.get(volumeMounts(svc).find((m) => m.target === target)?.volume ?? "") ?? "";
    const webhookKeys = [
      ["api", "/run/citadel"],
      ["cli", "/run/citadel-cli"],
    ].map(([svc = "", dir = ""]) => {
      expect(str(at(services[svc], "environment", "WEBHOOK_KEY_FILE")), svc).toBe(`${dir}/webhook-key`);
      return readFileSync(path.join(mountedAt(svc, dir), "webhook-key"), "utf8");
    });
    expect(Buffer.from(webhookKeys[0] ?? "", "base64").length).toBe(32);
    expect(webhookKeys[1], "the CLI's copy is the API's key").toBe(webhookKeys[0]);
    for (const svc of ["worker", "worker-gpu", "publisher"]) {
      expect(at(services[svc], "environment", "WEBHOOK_KEY_FILE"), svc).toBeUndefined();
    }
  });

  it("gives Redis one ACL user per role: each authenticates with its own password only", async () => {
    const { Redis } = await import("ioredis");
    const acl = path.join(layout.volumes.get("citadel-secrets-redis") ?? "", "redis-users.acl");
    const port = await freePort();
    const server = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--aclfile", acl],
      {
        stdio: "ignore",
      },
    );
    const url = (svc: string) => {
      const vol = volumeMounts(svc).find((m) => m.target === "/run/citadel")?.volume ?? "";
      const u = new URL(wrapperEnv(svc, layout.volumes.get(vol) ?? "").REDIS_URL ?? "");
      u.host = `127.0.0.1:${port}`;
      return u.toString();
    };
    const clients: InstanceType<typeof Redis>[] = [];
    const connect = (u: string) => {
      const c = new Redis(u, {
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        retryStrategy: () => null,
        enableReadyCheck: false,
      });
      c.on("error", () => undefined);
      clients.push(c);
      return c;
    };
    try {
      for (let i = 0; ; i++) {
        const up = await new Promise<boolean>((resolve) => {
          const sock = net.connect(port, "127.0.0.1", () => {
            sock.end();
            resolve(true);
          });
          sock.on("error", () => resolve(false));
        });
        if (up) break;
        if (i > 400) throw new Error("redis-server did not start");
        await new Promise((r) => setTimeout(r, 50));
      }
      for (const svc of ["api", "worker", "publisher"]) {
        const c = connect(url(svc));
        await c.connect();
        expect(String(await c.call("CLIENT", "INFO")), svc).toContain(` user=${svc} `);
        // A key the role may write (test/infra/redis-acl.test.ts covers each role's rights).
        const own =
          svc === "publisher" ? "{citadel}:registry:acl-check" : keys.cancelled("{citadel}", "m.compose-acl-check0");
        expect(await c.set(own, "1"), svc).toBe("OK");
        await expect(c.flushall(), svc).rejects.toThrow(/NOPERM/);
      }
      // No password: the default user is off. Another role's user with this role's
      // password is refused.
      const anon = connect(`redis://127.0.0.1:${port}`);
      await anon.connect();
      await expect(anon.get("x")).rejects.toThrow(/NOAUTH/);
      await expect(anon.call("AUTH", "worker", new URL(url("api")).password)).rejects.toThrow(/WRONGPASS/);
      // The health check's user may PING and nothing else.
      const health = readFileSync(
        path.join(layout.volumes.get("citadel-secrets-redis") ?? "", "redis-health-password"),
        "utf8",
      );
      const h = connect(`redis://health:${health}@127.0.0.1:${port}`);
      await h.connect();
      expect(await h.ping()).toBe("PONG");
      await expect(h.get("x")).rejects.toThrow(/NOPERM/);
      expect(str(at(services.redis, "healthcheck", "test", 1))).toContain("--user health");
    } finally {
      for (const c of clients) c.disconnect();
      server.kill("SIGKILL");
    }
  });
});

describe("docker-compose.yml: the API holds no Vault credentials", () => {
  it("sets no Vault setting or identity on the API and mounts nothing Vault-related into it", () => {
    const env = (at(services.api, "environment") as Obj | undefined) ?? {};
    expect(Object.keys(env).filter((k) => /^VAULT_|^KEY_PROVIDER$|^CITADEL_VAULT_ROLE$/.test(k))).toEqual([]);
    for (const m of volumeMounts("api")) expect(m.volume, "api volume").not.toMatch(/vault|worker|publisher/);
    expect(dependsOn("api")["vault-init"], "the API waits for the stack, not for Vault credentials").toBe(
      "service_completed_successfully",
    );
  });
});

describe("docker-compose.yml: core dumps", () => {
  it("sets RLIMIT_CORE to 0 (soft and hard) for every service", () => {
    for (const [name, svc] of Object.entries(services)) {
      const core = at(svc, "ulimits", "core");
      expect(core, name).toEqual({ soft: 0, hard: 0 });
    }
  });
});

describe("docker-compose.yml: queue quotas fit in Redis", () => {
  it(`keeps MAX_TENANT_QUEUED_BYTES × ${QUOTA_FACTOR_TEXT} below Redis maxmemory`, () => {
    const quota = Number(at(services.api, "environment", "MAX_TENANT_QUEUED_BYTES"));
    expect(Number.isInteger(quota) && quota > 0, "MAX_TENANT_QUEUED_BYTES is set explicitly").toBe(true);
    const maxmemory = redisBytes(redisConf(read("infra/redis/redis.conf")).get("maxmemory") ?? "");
    expect(quota * QUOTA_FACTOR).toBeLessThan(maxmemory);
  });

  it("keeps results and failed jobs for bounded, explicit times", () => {
    const env = (at(services.api, "environment") as Obj | undefined) ?? {};
    expectSaneTtls(Number(env.RESULT_TTL_MS), Number(env.FAILED_TTL_MS));
  });
});

describe("renderCompose: docker compose config's substitution, env_file and command forms", () => {
  it("substitutes like compose: $$, ${VAR}, $VAR, :- and - defaults, :? errors", () => {
    const vars = { SET: "x", EMPTY: "" };
    expect(composeSubstitute("a $$(cat f) $${SET}", vars)).toBe("a $(cat f) ${SET}");
    expect(composeSubstitute("${SET}/$SET/${UNSET}", vars)).toBe("x/x/");
    expect(composeSubstitute("${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${SET:-d}", vars)).toBe("d  d x");
    expect(() => composeSubstitute("${UNSET:?must be set}", vars)).toThrow(/UNSET is missing: must be set/);
    expect(() => composeSubstitute("${EMPTY:?}", vars)).toThrow(/EMPTY/);
    expect(composeSubstitute("${EMPTY?}", vars)).toBe("");
  });

  it("renders the services a fresh clone gets: defaults filled in, anchors merged", () => {
    const rendered = renderCompose();
    const api = rendered.get("api");
    expect(str(api?.spec.image)).toMatch(/^citadel\/api:\d+\.\d+\.\d+$/);
    expect(arr(api?.spec.ports)).toEqual(["127.0.0.1:8080:8080"]);
    expect(api?.environment.LOG_LEVEL).toBe("info");
    expect(api?.entrypoint).toEqual(["/bin/sh", "/opt/citadel/compose/with-secrets.sh"]);
    // `$$` in a healthcheck reaches the container as `$`.
    expect(JSON.stringify(rendered.get("redis")?.spec.healthcheck)).toContain('REDISCLI_AUTH=\\"$(cat ');
    expect(renderCompose({ CITADEL_API_PORT: "9000" }).get("api")?.spec.ports).toEqual(["127.0.0.1:9000:8080"]);
  });
});
