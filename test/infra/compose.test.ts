import { describe, expect, it } from "vitest";
import { arr, at, isObj, isPinnedImage, loadCompose, type Obj, read, redisConf, str } from "./support.js";

/** `${VAR:-default}` → default, as compose interpolates with an empty environment. */
function interpolate(s: string): string {
  return s.replace(/\$\{[A-Z0-9_]+(?::?-([^}]*))?\}/g, (_m, def: string | undefined) => def ?? "");
}

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

  it("hands AppRole credentials from init.sh to the services as files", () => {
    expect(at(services["vault-init"], "environment", "CITADEL_APPROLE_OUT_DIR")).toBe("/run/citadel/approle");
    // init.sh writes them 0600: vault-init must run as the services' uid
    expect(at(services["vault-init"], "user")).toBe("10001:10001");
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

  it("passes the conventional environment to the app services", () => {
    for (const s of ["api", "worker", "worker-gpu", "publisher"]) {
      const env = (at(services[s], "environment") as Obj | undefined) ?? {};
      expect(env.CITADEL_PREFIX, s).toBe("{citadel}");
      expect(env.KEY_PROVIDER, s).toBe("vault");
      expect(env.MODEL_STORE_DIR, s).toBe("/var/lib/citadel/models");
      expect(str(env.VAULT_ADDR), s).toMatch(/^http:\/\/vault:8200$/);
    }
    expect(at(services.worker, "environment", "VAULT_AUTH")).toBe("approle");
    expect(at(services.api, "environment", "BOARD_ADMIN_PASSWORD_FILE")).toMatch(/^\/run\/citadel\//);
    // secrets volume is read-only wherever it is not generated
    for (const s of ["api", "worker", "worker-gpu", "redis"]) {
      expect(arr(at(services[s], "volumes")).map(str), s).toContain(
        s === "redis" ? "citadel-secrets:/run/citadel:ro" : "citadel-secrets:/run/citadel:ro",
      );
    }
    const grace = Number(str(at(services.worker, "stop_grace_period")).replace(/s$/, ""));
    expect(grace * 1000).toBeGreaterThan(Number(at(services.worker, "environment", "SHUTDOWN_TIMEOUT_MS")));
  });
});
