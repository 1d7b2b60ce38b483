// Generates the compose stack's secrets into the citadel-secrets volume on first
// start (idempotent: existing files are kept). Nothing here is ever committed or
// baked into an image. Usage: node gen-secrets.mjs /run/citadel
import { createHash, randomBytes } from "node:crypto";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

const dir = process.argv[2] ?? "/run/citadel";

function secretFile(name, make) {
  const file = path.join(dir, name);
  if (!existsSync(file)) {
    writeFileSync(file, make(), { mode: 0o640, flag: "wx" });
    process.stderr.write(`created ${file}\n`);
  }
  chmodSync(file, 0o640);
  return file;
}

const token = () => randomBytes(24).toString("hex");
const redisPasswordFile = secretFile("redis-password", token);
secretFile("board-admin-password", token);
secretFile("board-ops-password", token);
// Redis reads users from an ACL file holding only the SHA-256 of the password.
const redisPassword = readFileSync(redisPasswordFile, "utf8").trim();
const hash = createHash("sha256").update(redisPassword).digest("hex");
writeFileSync(
  path.join(dir, "redis-users.acl"),
  `user default on #${hash} ~* &* +@all -flushall -flushdb -debug -shutdown -config -module -acl -replicaof -slaveof -failover -monitor\n`,
  { mode: 0o640 },
);
chmodSync(path.join(dir, "redis-users.acl"), 0o640);
