// Generates the compose stack's secrets on first start (idempotent: existing files are
// kept; modes and groups are re-applied every run). Nothing here is ever committed or
// baked into an image. Usage: node gen-secrets.mjs /secrets
//
// Each role has its own volume, mounted here at <root>/<role> and at /run/citadel in that
// role's containers only. Files are owned by the bootstrap uid, group = the role's gid
// (infra/compose/roles.env), mode 0440; directories 0750. A role's process (its own uid
// and gid, no supplementary groups) reads its own files and nothing of another role.
// <root>/vault-keys (the unseal key, written by vault-bootstrap.sh) is prepared 0700.
import { createHash, randomBytes } from "node:crypto";
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = process.argv[2] ?? "/secrets";
// This folder (mounted at /opt/citadel/compose; infra/redis next to it at /opt/citadel/redis).
const here = path.dirname(fileURLToPath(import.meta.url));
const ids = readRoleIds(path.join(here, "roles.env"));

/** infra/redis/acl-rules.conf: `user <name> <rules…>` lines (no passwords), comments skipped. */
function readAclRules(file) {
  const out = [];
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const m = /^user\s+(\S+)\s+(.*\S)\s*$/.exec(line);
    if (m) out.push({ name: m[1], rules: m[2] });
    else if (line.trim() && !line.trim().startsWith("#")) throw new Error(`acl-rules.conf: cannot read "${line}"`);
  }
  return out;
}

function readRoleIds(file) {
  const out = {};
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const m = /^CITADEL_ID_([A-Z]+)=(\d+)$/.exec(line.trim());
    if (m) out[m[1].toLowerCase()] = Number(m[2]);
  }
  return out;
}

function gidOf(role) {
  const gid = ids[role];
  if (gid === undefined) throw new Error(`roles.env has no CITADEL_ID_${role.toUpperCase()}`);
  return gid;
}

/** <root>/<volume>, group = the role's gid (a volume is named for its role, or for the one service that mounts it). */
function roleDir(role, volume = role) {
  const dir = path.join(root, volume);
  mkdirSync(dir, { recursive: true, mode: 0o750 });
  chownSync(dir, -1, gidOf(role));
  chmodSync(dir, 0o750);
  return dir;
}

/** Writes `make()` to <volume>/<name> (volume: the role's own by default) if absent (via a private temp file), then 0440 group <role>. */
function secretFile(role, name, make, { replace = false, volume = role } = {}) {
  const file = path.join(roleDir(role, volume), name);
  if (replace || !existsSync(file)) {
    const tmp = `${file}.tmp`;
    rmSync(tmp, { force: true }); // a leftover of an interrupted run (0440: not writable)
    writeFileSync(tmp, make(), { mode: 0o600, flag: "wx" });
    chownSync(tmp, -1, gidOf(role));
    chmodSync(tmp, 0o440);
    renameSync(tmp, file);
    if (!replace) process.stderr.write(`created ${role}/${name}\n`);
  }
  chownSync(file, -1, gidOf(role));
  chmodSync(file, 0o440);
  return file;
}

const password = () => randomBytes(24).toString("hex");
// The audit chain's HMAC key: 32 random bytes, base64 (AUDIT_KEY_FILE), one per writer role.
const auditKey = () => randomBytes(32).toString("base64");

const redisUsers = {};
for (const role of ["api", "worker", "publisher"]) {
  redisUsers[role] = readFileSync(secretFile(role, "redis-password", password), "utf8").trim();
  secretFile(role, "audit-key", auditKey);
}
// The operator's webhook key (WEBHOOK_KEY_FILE): every tenant's webhook signing secret is
// derived from it. The API signs with it; the ad-hoc CLI (publisher role) derives the
// secret it prints for a tenant, so it holds the same key: a copy, rewritten from the
// API's each run, in a volume of its own that only the `cli` service mounts (the
// publisher one-shot and vault-init, which mount the publisher's volume, never see it).
const webhookKeyFile = secretFile("api", "webhook-key", auditKey);
secretFile("publisher", "webhook-key", () => readFileSync(webhookKeyFile, "utf8"), { replace: true, volume: "cli" });
// Earlier stacks kept that copy in the publisher's volume.
rmSync(path.join(root, "publisher", "webhook-key"), { force: true });
secretFile("api", "board-admin-password", password);
secretFile("api", "board-ops-password", password);
secretFile("grafana", "grafana-admin-password", password);
const health = readFileSync(secretFile("redis", "redis-health-password", password), "utf8").trim();

// Redis reads its users from an ACL file holding only SHA-256 hashes: one user per role
// (so a role's password can be rotated or revoked alone, and CLIENT LIST names the role),
// each limited to its own keys and commands by infra/redis/acl-rules.conf (shared with
// Kubernetes), and the password-less default user is off. Rules for roles compose does
// not run (the KEDA scaler) are left out.
const sha = (s) => createHash("sha256").update(s).digest("hex");
const passwords = { ...redisUsers, health };
const acl = ["user default off"];
for (const { name, rules } of readAclRules(path.join(here, "../redis/acl-rules.conf"))) {
  if (passwords[name] !== undefined) acl.push(`user ${name} on #${sha(passwords[name])} ${rules}`);
}
for (const role of Object.keys(passwords)) {
  if (!acl.some((l) => l.startsWith(`user ${role} on `))) throw new Error(`acl-rules.conf has no rules for ${role}`);
}
acl.push("");
const aclText = acl.join("\n");
secretFile("redis", "redis-users.acl", () => aclText, { replace: true });

// The bootstrap's own volume: vault-bootstrap.sh keeps the unseal key there.
const keys = path.join(root, "vault-keys");
mkdirSync(keys, { recursive: true, mode: 0o700 });
chmodSync(keys, 0o700);
