import { Cluster, type ClusterOptions, Redis, type RedisOptions } from "ioredis";

export type { Cluster, Redis } from "ioredis";

/** A connection to one Redis or to a Redis Cluster: every caller takes either. */
export type RedisConn = Redis | Cluster;

type ErrorSink = (err: Error) => void;

/**
 * Where Redis is: a URL (`redis://`, `rediss://`, or `redis+cluster://` /
 * `rediss+cluster://` with comma-separated host:port pairs), or a process's settings,
 * where REDIS_CLUSTER_NODES beside REDIS_URL names the cluster's nodes and REDIS_URL
 * carries the credentials and TLS.
 */
export type RedisTarget = string | { REDIS_URL: string; REDIS_CLUSTER_NODES?: readonly string[] | undefined };

export interface RedisEndpoint {
  /** Cluster seed nodes; absent for a single Redis. */
  nodes?: { host: string; port: number }[];
  /** The URL for a single Redis. */
  url?: string;
  username?: string;
  password?: string;
  tls: boolean;
}

const CLUSTER_URL = /^(rediss?)\+cluster:\/\/(?:([^@/?#]*)@)?([^/?#]+)(?:[/?#].*)?$/i;

function hostPort(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(s.trim());
  const port = Number(m?.[3] ?? 6379);
  if (!m || !(port > 0 && port < 65536)) throw new Error("a Redis cluster node is not host:port");
  return { host: (m[1] ?? m[2]) as string, port };
}

/**
 * Reads a Redis target. Errors never quote the URL: it may carry a password.
 */
export function redisEndpoint(target: RedisTarget): RedisEndpoint {
  const url = typeof target === "string" ? target : target.REDIS_URL;
  const listed = typeof target === "string" ? [] : (target.REDIS_CLUSTER_NODES ?? []);
  const c = CLUSTER_URL.exec(url);
  if (c) {
    const [user, pass] = splitUserinfo(c[2]);
    return {
      nodes: (c[3] as string)
        .split(",")
        .filter((s) => s.trim() !== "")
        .map(hostPort),
      ...(user ? { username: user } : {}),
      ...(pass !== undefined ? { password: pass } : {}),
      tls: (c[1] as string).toLowerCase() === "rediss",
    };
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error("REDIS_URL is not a URL");
  }
  const tls = u.protocol === "rediss:";
  if (listed.length === 0) return { url, tls };
  return {
    nodes: listed.map(hostPort),
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    tls,
  };
}

function splitUserinfo(info: string | undefined): [string | undefined, string | undefined] {
  if (!info) return [undefined, undefined];
  const i = info.indexOf(":");
  if (i < 0) return [decodeURIComponent(info), undefined];
  return [decodeURIComponent(info.slice(0, i)) || undefined, decodeURIComponent(info.slice(i + 1))];
}

/** Whether a target names a Redis Cluster. */
export function isClusterTarget(target: RedisTarget): boolean {
  return redisEndpoint(target).nodes !== undefined;
}

/** Options that belong to the Cluster object rather than to each node's connection. */
const CLUSTER_LEVEL = ["enableOfflineQueue", "enableReadyCheck", "lazyConnect", "enableAutoPipelining"] as const;

function connect(target: RedisTarget, opts: RedisOptions): RedisConn {
  const ep = redisEndpoint(target);
  if (!ep.nodes) return new Redis(ep.url as string, opts);
  const nodeOpts: RedisOptions = { ...opts };
  const clusterOpts: ClusterOptions = {};
  for (const k of CLUSTER_LEVEL) {
    if (opts[k] !== undefined) (clusterOpts as Record<string, unknown>)[k] = opts[k];
    delete nodeOpts[k];
  }
  return new Cluster(ep.nodes, {
    ...clusterOpts,
    // The slot map is re-read when a node fails; a seed list of one node still finds the rest.
    slotsRefreshTimeout: Math.max(1000, opts.connectTimeout ?? 2000),
    // A cluster that lost a master answers CLUSTERDOWN until a replica takes over: retry, bounded.
    retryDelayOnClusterDown: 200,
    retryDelayOnTryAgain: 200,
    maxRedirections: 16,
    // Reconnect forever like a single Redis does (ioredis' default retryStrategy).
    clusterRetryStrategy: (times) => Math.min(times * 100, 2000),
    // Hosted clusters behind TLS present certificates for the names given, not the IPs CLUSTER SLOTS returns.
    ...(ep.tls ? { dnsLookup: (address, cb) => cb(null, address) } : {}),
    redisOptions: {
      ...nodeOpts,
      ...(ep.username ? { username: ep.username } : {}),
      ...(ep.password !== undefined ? { password: ep.password } : {}),
      ...(ep.tls ? { tls: { ...(nodeOpts.tls ?? {}) } } : {}),
    },
  });
}

/**
 * A connection for BullMQ: it needs `maxRetriesPerRequest: null` so blocking
 * commands survive reconnects. Kept apart from ordinary clients, which should fail
 * fast instead (the API answers 503 rather than hanging). On a cluster BullMQ reads
 * the per-node options, so the setting goes there; its keys share the prefix's hash tag.
 */
export function bullConnection(target: RedisTarget, onError: ErrorSink, extra: RedisOptions = {}): RedisConn {
  const r = connect(target, { maxRetriesPerRequest: null, enableReadyCheck: true, ...extra });
  r.on("error", onError);
  return r;
}

/**
 * An ordinary client: commands fail after one retry while Redis is down. (Not
 * auto-pipelined: ioredis 5.9's auto-pipelining crashes the process when a MULTI
 * shares its tick; concurrent commands are pipelined on the wire anyway.)
 */
export function redisClient(target: RedisTarget, onError: ErrorSink, extra: RedisOptions = {}): RedisConn {
  const r = connect(target, { maxRetriesPerRequest: 1, enableOfflineQueue: true, connectTimeout: 2000, ...extra });
  r.on("error", onError);
  return r;
}

/**
 * A second connection like `conn` (same node or cluster, same options) under a client
 * name of its own, for a command that holds its connection (a blocking wait): CLIENT
 * LIST then shows whose wait it is.
 */
export function duplicateNamed(conn: RedisConn, name: string): RedisConn {
  if (conn instanceof Cluster) {
    return conn.duplicate(undefined, { redisOptions: { ...conn.options.redisOptions, connectionName: name } });
  }
  return conn.duplicate({ connectionName: name });
}

/**
 * Closes a connection: QUIT, bounded (a cluster node connection left reconnecting
 * after an outage may never answer it), then a hard disconnect.
 */
export async function closeRedis(conn: RedisConn, timeoutMs = 2000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      conn.quit(),
      new Promise((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
    conn.disconnect();
  }
}

/**
 * Waits for the given work to settle, or `ms`, whichever comes first. Closing BullMQ
 * objects waits on Redis, and after a Redis Cluster outage a blocking read may never
 * return: shutdown then goes on and cuts the connections instead.
 */
export async function settledWithin(ms: number, work: readonly (Promise<unknown> | undefined)[]): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.allSettled(work),
    new Promise((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
}

/**
 * Every key matching a pattern. On a cluster SCAN covers one node, so each master is
 * scanned in turn.
 */
export async function scanKeys(client: RedisConn, match: string): Promise<string[]> {
  const nodes: Redis[] = client instanceof Cluster ? client.nodes("master") : [client];
  const found: string[] = [];
  for (const node of nodes) {
    let cursor = "0";
    do {
      const [next, keys] = await node.scan(cursor, "MATCH", match, "COUNT", 1000);
      cursor = next;
      found.push(...keys);
    } while (cursor !== "0");
  }
  return found;
}

/**
 * Whether an error means Redis is unreachable (as opposed to a bug): callers answer
 * 503 and retry later instead of failing hard. A cluster without a quorum, a slot map
 * it cannot read, or slots on the move counts as unreachable too, and so does a master
 * refusing writes for want of in-sync replicas (`min-replicas-to-write`: NOREPLICAS).
 */
export function isRedisUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (err.name === "MaxRetriesPerRequestError" || err.name === "ClusterAllFailedError") return true;
  return /Connection is closed|Stream isn't writeable|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|LOADING|Connection in subscriber mode|CLUSTERDOWN|TRYAGAIN|MASTERDOWN|Failed to refresh slots cache|None of startup nodes is available|Cluster isn't ready|Cluster is (?:disconnected|disconnecting|ended)|Too many Cluster redirections|Node is disconnected|NOREPLICAS/i.test(
    err.message,
  );
}
