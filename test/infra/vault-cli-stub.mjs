// A stand-in for the `vault` CLI, for running infra/compose/vault-bootstrap.sh and
// infra/vault/init.sh where no Vault binary is installed (no Docker, no HashiCorp
// downloads on CI). It keeps a small Vault state in the JSON file VAULT_STUB_STATE
// (initialised, sealed, live tokens) and records every call with the token it carried,
// so a test can check what the scripts did: which token configured what, and whether
// the root token was revoked. Output formats follow the real CLI's default "table"
// output for the lines the scripts parse.
import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";

const stateFile = process.env.VAULT_STUB_STATE;
if (!stateFile) {
  process.stderr.write("VAULT_STUB_STATE is not set\n");
  process.exit(1);
}
const state = JSON.parse(readFileSync(stateFile, "utf8"));
const args = process.argv.slice(2);
const token = process.env.VAULT_TOKEN ?? "";
const id = (p) => `${p}-${randomBytes(12).toString("hex")}`;

function done(code, out = "") {
  state.calls.push({ args, token, code });
  writeFileSync(stateFile, JSON.stringify(state));
  if (out) process.stdout.write(out.endsWith("\n") ? out : `${out}\n`);
  process.exit(code);
}
function fail(code, msg) {
  process.stderr.write(`${msg}\n`);
  done(code);
}
const flag = (name) => args.find((a) => a.startsWith(`-${name}=`))?.slice(name.length + 2);
const has = (name) => args.includes(`-${name}`);
const live = () => state.tokens.includes(token);

const [cmd, sub] = args;
if (cmd === "status") {
  if (!state.reachable) fail(1, "Error checking seal status: connection refused");
  const out = `Key             Value\n---             -----\nInitialized     ${state.initialized}\nSealed          ${state.sealed}\n`;
  done(state.sealed ? 2 : 0, out);
}
if (cmd === "operator" && sub === "init") {
  if (state.initialized) fail(2, "Error initializing: Vault is already initialized");
  state.initialized = true;
  state.sealed = true;
  state.unsealKey = randomBytes(32).toString("base64");
  const root = id("root");
  state.tokens.push(root);
  state.roots.push(root);
  done(0, `Unseal Key 1: ${state.unsealKey}\n\nInitial Root Token: ${root}\n\nVault initialized with 1 key shares`);
}
if (cmd === "operator" && sub === "unseal") {
  if (args[2] !== state.unsealKey) fail(2, "Error unsealing: invalid key");
  state.sealed = false;
  done(0, "Sealed          false");
}
if (cmd === "operator" && sub === "generate-root") {
  if (state.sealed) fail(2, "Error: Vault is sealed");
  const gr = state.generateRoot;
  if (has("status")) done(0, `Nonce         ${gr?.nonce ?? ""}\nStarted       ${!!gr}\nProgress      0/1`);
  if (has("cancel")) {
    state.generateRoot = null;
    done(0, "Success! Root token generation canceled (if it was started)");
  }
  if (has("generate-otp")) done(0, id("otp"));
  if (has("init")) {
    if (gr) fail(2, "Error initializing root generation: root generation already in progress");
    state.generateRoot = { nonce: id("nonce"), otp: flag("otp") };
    done(0, `Nonce         ${state.generateRoot.nonce}\nStarted       true\nProgress      0/1\nComplete      false`);
  }
  const decode = flag("decode");
  if (decode !== undefined) {
    const root = state.encoded[`${decode}/${flag("otp")}`];
    if (!root) fail(1, "Error xoring token");
    done(0, root);
  }
  // Providing the unseal key ("-": from stdin) completes generation with one share.
  if (!gr || flag("nonce") !== gr.nonce) fail(1, "Missing or wrong nonce");
  const key = args.at(-1) === "-" ? readFileSync(0, "utf8").trim() : args.at(-1);
  if (key !== state.unsealKey) fail(2, "Error posting unseal key: invalid key");
  const root = id("root");
  state.tokens.push(root);
  state.roots.push(root);
  const encoded = id("encoded");
  state.encoded[`${encoded}/${gr.otp}`] = root;
  state.generateRoot = null;
  done(
    0,
    `Nonce            ${gr.nonce}\nStarted          true\nProgress         1/1\nComplete         true\nEncoded Token    ${encoded}`,
  );
}
if (cmd === "token" && sub === "lookup") done(live() ? 0 : 2);
if (cmd === "token" && sub === "revoke" && args.includes("-self")) {
  if (!live()) fail(2, "Error revoking token: permission denied");
  state.tokens = state.tokens.filter((t) => t !== token);
  done(0, "Success! Revoked token (if it existed)");
}

// Everything else is init.sh configuring Vault: it needs a live token.
if (state.sealed) fail(2, "Error: Vault is sealed");
if (!live()) fail(2, "Code: 403. Errors: permission denied");
const path = args.find((a) => /^(auth|transit|sys)\//.test(a)) ?? "";
if (state.failOn && args.join(" ").includes(state.failOn)) fail(2, `Error: injected failure on ${state.failOn}`);
if ((cmd === "secrets" || cmd === "auth") && sub === "list") {
  const mounts = state.mounts[cmd] ?? [];
  done(0, `Path    Type\n----    ----\n${mounts.map((m) => `${m}    x`).join("\n")}`);
}
if ((cmd === "secrets" || cmd === "auth") && sub === "enable") {
  const p = flag("path") ?? args.at(-1);
  state.mounts[cmd] = [...(state.mounts[cmd] ?? []), `${p}/`];
  done(0, `Success! Enabled ${p}`);
}
if (cmd === "read" && path.startsWith("transit/keys/")) {
  const type = state.keys[path];
  if (!type) fail(2, "No value found");
  done(0, type);
}
if (cmd === "write" && path.startsWith("transit/keys/")) {
  state.keys[path] = args.find((a) => a.startsWith("type="))?.slice(5) ?? "aes256-gcm96";
  done(0);
}
if (cmd === "read" && path.endsWith("/role-id")) done(0, `role-id-of-${path.split("/")[3]}`);
if (cmd === "write" && path.endsWith("/secret-id")) {
  const secretId = id("secret-id");
  state.secretIds.push(secretId);
  done(0, secretId);
}
done(0);
