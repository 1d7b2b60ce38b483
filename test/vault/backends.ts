import { randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import { startVaultTestServer } from "../support/vault-server/index.js";

export type VaultBackendKind = "external" | "testcontainers" | "test-server";

export interface VaultBackend {
  kind: VaultBackendKind;
  /** Why this backend ran (and why the better ones did not). */
  description: string;
  addr: string;
  /** A root-capable token. */
  rootToken: string;
  /** Seal / unseal through the API; absent when sealing would need a key we lack. */
  seal?: () => Promise<void>;
  unseal?: () => Promise<void>;
  stop(): Promise<void>;
}

export const VAULT_IMAGE = process.env.CITADEL_VAULT_IMAGE ?? "hashicorp/vault:1.20.4";

async function api(addr: string, token: string, method: string, path: string, body?: object): Promise<Response> {
  return fetch(`${addr}/v1/${path}`, {
    method,
    headers: { "X-Vault-Token": token, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
}

function sealControls(addr: string, rootToken: string, unsealKey: string) {
  return {
    seal: async () => {
      const res = await api(addr, rootToken, "PUT", "sys/seal");
      if (res.status >= 300) throw new Error(`seal failed: ${res.status}`);
    },
    unseal: async () => {
      const res = await api(addr, "", "PUT", "sys/unseal", { key: unsealKey });
      if (res.status >= 300) throw new Error(`unseal failed: ${res.status}`);
      for (let i = 0; i < 100; i++) {
        const health = await fetch(`${addr}/v1/sys/health`);
        if (health.status === 200) return;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      throw new Error("Vault did not become active after unseal");
    },
  };
}

async function startContainer(): Promise<VaultBackend> {
  const { GenericContainer, Wait } = await import("testcontainers");
  const rootToken = `root-${randomBytes(12).toString("hex")}`;
  let unsealKey = "";
  const container = await new GenericContainer(VAULT_IMAGE)
    .withEnvironment({ VAULT_DEV_ROOT_TOKEN_ID: rootToken, VAULT_DEV_LISTEN_ADDRESS: "0.0.0.0:8200" })
    .withAddedCapabilities("IPC_LOCK")
    .withExposedPorts(8200)
    .withLogConsumer((stream: Readable) => {
      stream.on("data", (line: Buffer | string) => {
        const match = /Unseal Key: (\S+)/.exec(String(line));
        if (match?.[1]) unsealKey = match[1];
      });
    })
    .withWaitStrategy(Wait.forHttp("/v1/sys/health", 8200).forStatusCode(200))
    .start();
  const addr = `http://${container.getHost()}:${container.getMappedPort(8200)}`;
  const controls = unsealKey ? sealControls(addr, rootToken, unsealKey) : {};
  return {
    kind: "testcontainers",
    description: `testcontainers ${VAULT_IMAGE} in dev mode`,
    addr,
    rootToken,
    ...controls,
    stop: async () => {
      await container.stop();
    },
  };
}

/**
 * The best Vault available: VAULT_ADDR (+VAULT_TOKEN, root-capable) when set; else a
 * real Vault in a container when Docker works; else the Vault-API-compatible test server
 * started with nothing enabled, so the suite enables engines through the API exactly as
 * on a fresh dev Vault.
 */
export async function startVaultBackend(): Promise<VaultBackend> {
  const external = process.env.VAULT_ADDR;
  if (external) {
    const token = process.env.VAULT_TOKEN;
    if (!token)
      throw new Error("VAULT_ADDR is set but VAULT_TOKEN is not (the contract suite needs a root-capable token)");
    const unsealKey = process.env.VAULT_UNSEAL_KEY;
    return {
      kind: "external",
      description: `external Vault at VAULT_ADDR${unsealKey ? " (VAULT_UNSEAL_KEY set: sealing enabled)" : ""}`,
      addr: external.replace(/\/+$/, ""),
      rootToken: token,
      ...(unsealKey ? sealControls(external.replace(/\/+$/, ""), token, unsealKey) : {}),
      stop: async () => undefined,
    };
  }
  let reason: string;
  try {
    return await startContainer();
  } catch (err) {
    const first = (err as Error).message.split("\n")[0] ?? "unknown error";
    reason = /container runtime strategy/i.test(first)
      ? "no Docker (testcontainers found no container runtime)"
      : first;
  }
  const server = await startVaultTestServer({ enable: { transit: false, approle: false, kubernetes: false } });
  return {
    kind: "test-server",
    description: `Vault-API-compatible test server (no VAULT_ADDR; ${reason})`,
    addr: server.addr,
    rootToken: server.rootToken,
    ...sealControls(server.addr, server.rootToken, server.unsealKey),
    stop: () => server.stop(),
  };
}
