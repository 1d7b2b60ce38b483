import { execFileSync, spawnSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import { arr, at, interpolate, isObj, loadCompose, type Obj, ROOT, str } from "./support.js";

/**
 * Runs the compose stack's secret bootstrap for real, outside Docker: gen-secrets.mjs
 * (as `secrets-init` runs it) and vault-bootstrap.sh + infra/vault/init.sh (as
 * `vault-init` runs them, against a stand-in `vault` CLI), each seeing exactly the
 * named volumes docker-compose.yml mounts into that service, at the same paths. A test
 * then asks what each service would see through its own mounts, as its own uid/gid.
 */

export const compose = loadCompose();
export const services = (isObj(compose.services) ? compose.services : {}) as Record<string, Obj>;

export interface Mount {
  volume: string;
  target: string;
  readOnly: boolean;
}

/** The named-volume mounts of a service (bind mounts of ./paths are left out). */
export function volumeMounts(service: string): Mount[] {
  const out: Mount[] = [];
  for (const v of arr(at(services[service], "volumes")).map(str)) {
    const [source = "", target = "", mode] = v.split(":");
    if (source.startsWith(".") || source.startsWith("/")) continue;
    out.push({ volume: source, target, readOnly: mode === "ro" });
  }
  return out;
}

export function userOf(service: string): { uid: number; gid: number } {
  const [uid, gid] = str(at(services[service], "user")).split(":").map(Number);
  if (uid === undefined || gid === undefined || Number.isNaN(uid) || Number.isNaN(gid))
    throw new Error(`${service}: user is not uid:gid`);
  return { uid, gid };
}

/** infra/compose/roles.env: CITADEL_ID_<ROLE>=<uid = gid>. */
export function roleIds(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync(path.join(ROOT, "infra/compose/roles.env"), "utf8").split("\n")) {
    const m = /^CITADEL_ID_([A-Z]+)=(\d+)$/.exec(line.trim());
    if (m?.[1] && m[2]) out[m[1].toLowerCase()] = Number(m[2]);
  }
  return out;
}

export interface Layout {
  dir: string;
  /** Named volume → its directory on this machine. */
  volumes: Map<string, string>;
  /** The stand-in Vault's state after the last bootstrap run. */
  vault(): VaultStubState;
  /** Runs vault-bootstrap.sh once more (a restart); returns its exit status and output. */
  bootstrap(opts?: { failOn?: string; restartVault?: boolean }): { status: number | null; output: string };
}

export interface VaultStubState {
  reachable: boolean;
  initialized: boolean;
  sealed: boolean;
  unsealKey?: string;
  tokens: string[];
  roots: string[];
  secretIds: string[];
  calls: { args: string[]; token: string; code: number }[];
  failOn?: string;
}

/**
 * A service's container root for its mounts: a directory of symlinks, one per mount
 * target under `containerRoot`, to the shared volume directories.
 */
function mountRoot(dir: string, service: string, containerRoot: string, volumes: Map<string, string>): string {
  const root = path.join(dir, "containers", service);
  mkdirSync(root, { recursive: true });
  for (const m of volumeMounts(service)) {
    if (!m.target.startsWith(`${containerRoot}/`)) continue;
    const vdir = volumes.get(m.volume) ?? path.join(dir, "volumes", m.volume);
    mkdirSync(vdir, { recursive: true });
    volumes.set(m.volume, vdir);
    symlinkSync(vdir, path.join(root, m.target.slice(containerRoot.length + 1)));
  }
  return root;
}

/** Lays out every named volume secrets-init and vault-init mount and runs both, once. */
export function runBootstrap(): Layout {
  const dir = execFileSync("mktemp", ["-d", path.join(os.tmpdir(), "citadel-compose-secrets-XXXXXX")], {
    encoding: "utf8",
  }).trim();
  const volumes = new Map<string, string>();
  // secrets-init: node gen-secrets.mjs <root>
  const genArgs = arr(at(services["secrets-init"], "entrypoint")).map(str);
  const genRoot = genArgs.at(-1) ?? "";
  const secretsInit = mountRoot(dir, "secrets-init", genRoot, volumes);
  execFileSync(process.execPath, [path.join(ROOT, "infra/compose/gen-secrets.mjs"), secretsInit], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  // vault-init: vault-bootstrap.sh with CITADEL_SECRETS_ROOT, against the stand-in CLI.
  const env = (at(services["vault-init"], "environment") as Obj | undefined) ?? {};
  const vaultRoot = str(env.CITADEL_SECRETS_ROOT);
  const vaultInit = mountRoot(dir, "vault-init", vaultRoot, volumes);
  const bin = path.join(dir, "bin");
  mkdirSync(bin);
  writeFileSync(
    path.join(bin, "vault"),
    `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(path.join(ROOT, "test/infra/vault-cli-stub.mjs"))} "$@"\n`,
  );
  chmodSync(path.join(bin, "vault"), 0o755);
  const stateFile = path.join(dir, "vault-state.json");
  const initial: VaultStubState = {
    reachable: true,
    initialized: false,
    sealed: true,
    tokens: [],
    roots: [],
    secretIds: [],
    calls: [],
  };
  writeFileSync(stateFile, JSON.stringify({ ...initial, mounts: {}, keys: {}, encoded: {}, generateRoot: null }));
  const vault = () => JSON.parse(readFileSync(stateFile, "utf8")) as VaultStubState;
  const bootstrap: Layout["bootstrap"] = (opts = {}) => {
    const s = JSON.parse(readFileSync(stateFile, "utf8")) as Obj;
    s.failOn = opts.failOn ?? null;
    if (opts.restartVault) s.sealed = true;
    writeFileSync(stateFile, JSON.stringify(s));
    const r = spawnSync("/bin/sh", [path.join(ROOT, "infra/compose/vault-bootstrap.sh")], {
      encoding: "utf8",
      env: {
        PATH: `${bin}:${process.env.PATH ?? ""}`,
        HOME: dir,
        VAULT_STUB_STATE: stateFile,
        VAULT_ADDR: str(env.VAULT_ADDR),
        CITADEL_SECRETS_ROOT: vaultInit,
        CITADEL_VAULT_INIT: path.join(ROOT, "infra/vault/init.sh"),
      },
    });
    return { status: r.status, output: `${r.stdout}${r.stderr}` };
  };
  const first = bootstrap();
  if (first.status !== 0) throw new Error(`vault-bootstrap.sh failed:\n${first.output}`);
  return { dir, volumes, vault, bootstrap };
}

/** Every file under a directory, as paths relative to it. */
export function filesUnder(dir: string, prefix = ""): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) out.push(...filesUnder(full, `${prefix}${name}/`));
    else out.push(`${prefix}${name}`);
  }
  return out;
}

/**
 * Whether uid:gid (no supplementary groups: compose services get none but the
 * bootstrap's) may read `file` under `top`, by the permission bits of every directory
 * on the way and of the file. Files the test process created stand for the bootstrap
 * uid's, which is who creates them in compose.
 */
export function canRead(top: string, file: string, who: { uid: number; gid: number }, bootstrapUid: number): boolean {
  const me = process.getuid?.() ?? -1;
  const allowed = (p: string, bit: number) => {
    const st = statSync(p);
    const owner = st.uid === me ? bootstrapUid : st.uid;
    if (owner === who.uid) return (st.mode & (bit << 6)) !== 0;
    if (st.gid === who.gid) return (st.mode & (bit << 3)) !== 0;
    return (st.mode & bit) !== 0;
  };
  const parts = file.split("/");
  let cur = top;
  if (!allowed(cur, 1)) return false;
  for (const p of parts.slice(0, -1)) {
    cur = path.join(cur, p);
    if (!allowed(cur, 1)) return false;
  }
  return allowed(path.join(top, file), 4);
}

/** The environment a service's entry wrapper (with-secrets.sh) hands to its command. */
export function wrapperEnv(service: string, secretsDir: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries((at(services[service], "environment") as Obj | undefined) ?? {}))
    env[k] = interpolate(String(v));
  const entry = arr(at(services[service], "entrypoint")).map(str);
  const wrapper = entry.find((a) => a.endsWith("with-secrets.sh")) ?? "";
  const r = spawnSync(
    "/bin/sh",
    [
      path.join(ROOT, "infra/compose", path.basename(wrapper)),
      process.execPath,
      "-e",
      "process.stdout.write(JSON.stringify(process.env))",
    ],
    { encoding: "utf8", env: { ...env, PATH: process.env.PATH ?? "", CITADEL_SECRETS_DIR: secretsDir } },
  );
  if (r.status !== 0) throw new Error(`${service}: with-secrets.sh failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout) as Record<string, string>;
  // What the compose file and the wrapper set, less what the shell adds on its own.
  for (const k of ["PATH", "PWD", "OLDPWD", "SHLVL", "_"]) if (!(k in env)) delete out[k];
  return out;
}
