import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort } from "@citadel/cli/fleet";

/**
 * A local Redis Cluster for tests: 3 masters and 3 replicas from the machine's
 * redis-server, each with its own directory and ports, joined by
 * `redis-cli --cluster create`. The nodes share one temporary directory (one
 * nodes-<port>.conf each), removed on stop. Every node can load the same ACL file, so the
 * deployment's per-role users exist cluster-wide.
 */
export interface LocalCluster {
  /** `redis+cluster://[user:pass@]127.0.0.1:p1,…` naming every node. */
  url: string;
  nodes: ClusterNodeProc[];
  /** Stops every node (the cluster is gone; stop() still cleans up). */
  down(): Promise<void>;
  /**
   * Starts the stopped nodes again on their ports with their saved cluster config and
   * waits for cluster_state:ok. Their data is gone (no persistence): the cluster is empty.
   */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export interface ClusterNodeProc {
  port: number;
  busPort: number;
  child: ChildProcess;
  args: string[];
  stopped: boolean;
}

export interface ClusterOptions {
  masters?: number;
  replicasPerMaster?: number;
  /** An ACL file every node loads (`aclfile`), e.g. one rendered from infra/redis/acl-rules.conf. */
  aclFile?: string;
  /** Who redis-cli and the returned URL authenticate as when the default user is off. */
  auth?: { user: string; password: string };
  log?: (msg: string) => void;
}

const has = (bin: string) => spawnSync(bin, ["--version"], { stdio: "ignore" }).status === 0;

/**
 * redis-server and redis-cli, installed with apt-get (non-interactive, as root) when
 * missing. Returns why not when they are still missing, so a test can say it skips.
 */
export function ensureRedisBinaries(log: (m: string) => void = (m) => process.stderr.write(`${m}\n`)): string | null {
  if (has("redis-server") && has("redis-cli")) return null;
  if (process.getuid?.() === 0 && has("apt-get")) {
    log("redis-cluster: redis-server/redis-cli missing; installing redis-server with apt-get");
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
    spawnSync("apt-get", ["update", "-qq"], { stdio: "ignore", env });
    spawnSync("apt-get", ["install", "-y", "-qq", "redis-server"], { stdio: "ignore", env });
  }
  if (has("redis-server") && has("redis-cli")) return null;
  return "redis-server and redis-cli are not installed and could not be installed with apt-get";
}

function cli(port: number, auth: ClusterOptions["auth"], args: string[], timeoutMs = 30_000) {
  const a = auth ? ["--user", auth.user, "--pass", auth.password, "--no-auth-warning"] : [];
  return spawnSync("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...a, ...args], {
    encoding: "utf8",
    timeout: timeoutMs,
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`redis-cluster: timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Counts a CLUSTER NODES answer's nodes by role; `other` is any node in handshake or failing. */
export function clusterRoles(nodesText: string): { master: number; slave: number; other: number } {
  const out = { master: 0, slave: 0, other: 0 };
  for (const line of nodesText.trim().split("\n")) {
    const flags = (line.split(" ")[2] ?? "").split(",");
    if (flags.some((f) => ["handshake", "noaddr", "fail", "fail?"].includes(f))) out.other++;
    else if (flags.includes("master")) out.master++;
    else if (flags.includes("slave")) out.slave++;
    else out.other++;
  }
  return out;
}

function clusterOk(nodes: ClusterNodeProc[], auth: ClusterOptions["auth"]): Promise<void> {
  return until(
    "cluster_state:ok on every node",
    () => nodes.every((n) => /cluster_state:ok/.test(cli(n.port, auth, ["CLUSTER", "INFO"]).stdout)),
    30_000,
  );
}

function stopNode(n: ClusterNodeProc): Promise<void> {
  n.stopped = true;
  return new Promise((resolve) => {
    if (n.child.exitCode !== null || n.child.signalCode !== null) return resolve();
    const kill = setTimeout(() => n.child.kill("SIGKILL"), 5000);
    n.child.once("exit", () => {
      clearTimeout(kill);
      resolve();
    });
    n.child.kill("SIGTERM");
  });
}

/** Starts the nodes, creates the cluster and waits until every node reports cluster_state:ok. */
export async function startRedisCluster(opts: ClusterOptions = {}): Promise<LocalCluster> {
  const log = opts.log ?? ((m: string) => process.stderr.write(`${m}\n`));
  const missing = ensureRedisBinaries(log);
  if (missing) throw new Error(`redis-cluster: ${missing}`);
  const count = (opts.masters ?? 3) * (1 + (opts.replicasPerMaster ?? 1));
  const root = mkdtempSync(path.join(os.tmpdir(), "citadel-cluster-"));
  const nodes: ClusterNodeProc[] = [];
  const stop = async () => {
    await Promise.all(nodes.map(stopNode));
    rmSync(root, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < count; i++) {
      // The bus port is set apart (cluster-port): port + 10000 may lie past 65535.
      const [port, busPort] = [await freePort(), await freePort()];
      const args = [
        "--port",
        String(port),
        "--cluster-port",
        String(busPort),
        "--bind",
        "127.0.0.1",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        `nodes-${port}.conf`,
        "--cluster-node-timeout",
        "2000",
        "--cluster-announce-ip",
        "127.0.0.1",
        "--dir",
        root,
        "--save",
        "",
        "--appendonly",
        "no",
        // A replica syncs at once (the default waits 5 s for more replicas to batch the transfer).
        "--repl-diskless-sync-delay",
        "0",
        ...(opts.aclFile ? ["--aclfile", opts.aclFile] : []),
        ...(opts.auth ? ["--masteruser", opts.auth.user, "--masterauth", opts.auth.password] : []),
      ];
      const child = spawn("redis-server", args, { stdio: "ignore" });
      nodes.push({ port, busPort, child, args, stopped: false });
    }
    for (const n of nodes)
      await until(`node ${n.port}`, () => cli(n.port, opts.auth, ["PING"]).stdout.trim() === "PONG", 10_000);
    const create = cli(
      nodes[0]?.port as number,
      opts.auth,
      [
        "--cluster",
        "create",
        ...nodes.map((n) => `127.0.0.1:${n.port}`),
        "--cluster-replicas",
        String(opts.replicasPerMaster ?? 1),
        "--cluster-yes",
      ],
      60_000,
    );
    if (create.status !== 0) throw new Error(`redis-cli --cluster create failed: ${create.stdout}${create.stderr}`);
    await clusterOk(nodes, opts.auth);
    // Every node sees every other, with its role settled, before tests start.
    const masters = opts.masters ?? 3;
    await until(
      "every node to see the masters and attached replicas",
      () =>
        nodes.every((n) => {
          const roles = clusterRoles(cli(n.port, opts.auth, ["CLUSTER", "NODES"]).stdout);
          return roles.master === masters && roles.slave === count - masters && roles.other === 0;
        }),
      30_000,
    );
    // A replica that never completed its first sync cannot take over from its master:
    // failover tests need every link up before they start.
    await until(
      "every replica's link to its master to be up",
      () =>
        nodes.every((n) => {
          const info = cli(n.port, opts.auth, ["INFO", "replication"]).stdout;
          return /role:master/.test(info) || /master_link_status:up/.test(info);
        }),
      30_000,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  const cred = opts.auth ? `${encodeURIComponent(opts.auth.user)}:${encodeURIComponent(opts.auth.password)}@` : "";
  log(`redis-cluster: ${count} nodes on ports ${nodes.map((n) => n.port).join(",")}`);
  return {
    url: `redis+cluster://${cred}${nodes.map((n) => `127.0.0.1:${n.port}`).join(",")}`,
    nodes,
    down: async () => {
      await Promise.all(nodes.map(stopNode));
    },
    restart: async () => {
      for (const n of nodes.filter((x) => x.stopped)) {
        n.child = spawn("redis-server", n.args, { stdio: "ignore" });
        n.stopped = false;
      }
      await clusterOk(nodes, opts.auth);
    },
    stop,
  };
}
