/**
 * Pure parts of the cluster capacity row (cluster.ts) and of docs/capacity.md's shard
 * arithmetic: Redis Cluster key slots, parsing of INFO sections and CLUSTER SLOTS, and
 * how many shards a target rate needs. No I/O: unit-tested in shard-model.test.ts.
 */

// ---------------------------------------------------------------------------------
// key slots
// ---------------------------------------------------------------------------------

/** CRC16-CCITT (XMODEM: poly 0x1021, init 0), the checksum Redis Cluster hashes keys with. */
export function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const b of bytes) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

/**
 * The slot of a key as Redis Cluster computes it: of the hash tag (the text between the
 * first `{` and the next `}`) when that is not empty, else of the whole key.
 */
export function keySlot(key: string): number {
  const open = key.indexOf("{");
  if (open >= 0) {
    const close = key.indexOf("}", open + 1);
    if (close > open + 1) key = key.slice(open + 1, close);
  }
  return crc16(new TextEncoder().encode(key)) % 16384;
}

/** A CLUSTER SLOTS answer: `[from, to, [ip, port, id?], ...replicas]` per range. */
export type SlotRanges = readonly (readonly [number, number, readonly [string, number, ...unknown[]], ...unknown[]])[];

/** Which master ("ip:port") serves each slot, from a CLUSTER SLOTS answer. */
export function slotOwner(ranges: SlotRanges): (slot: number) => string {
  return (slot) => {
    const r = ranges.find(([from, to]) => slot >= from && slot <= to);
    if (!r) throw new Error(`no master serves slot ${slot}`);
    return `${r[2][0]}:${r[2][1]}`;
  };
}

/** The first of `candidates` (in order) for which `ok` holds; throws when none does. */
export function firstWhere<T>(what: string, candidates: Iterable<T>, ok: (c: T) => boolean): T {
  for (const c of candidates) if (ok(c)) return c;
  throw new Error(`no ${what} found`);
}

// ---------------------------------------------------------------------------------
// INFO parsing
// ---------------------------------------------------------------------------------

/** `field:value` lines of an INFO answer (sections and comments skipped). */
export function infoFields(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const i = line.indexOf(":");
    if (i > 0) out.set(line.slice(0, i), line.slice(i + 1));
  }
  return out;
}

/** Redis CPU time used so far (user + system, all threads), in µs, from INFO cpu. */
export function cpuMicros(infoCpu: string): number {
  const f = infoFields(infoCpu);
  const sys = Number(f.get("used_cpu_sys"));
  const user = Number(f.get("used_cpu_user"));
  if (!Number.isFinite(sys) || !Number.isFinite(user)) throw new Error("INFO cpu without used_cpu_sys/used_cpu_user");
  return Math.round((sys + user) * 1e6);
}

/** Calls per command from INFO commandstats (Lua's inner commands are counted under their own names). */
export function parseCommandStats(infoCommandstats: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const [k, v] of infoFields(infoCommandstats)) {
    if (!k.startsWith("cmdstat_")) continue;
    const calls = /(?:^|,)calls=(\d+)/.exec(v)?.[1];
    if (calls !== undefined) out.set(k.slice("cmdstat_".length), Number(calls));
  }
  return out;
}

/** One node's counters at one moment. */
export interface NodeSnapshot {
  cpuUs: number;
  commands: Map<string, number>;
  usedMemory: number;
  keys: number;
  /** Bytes received from and sent to clients and replicas so far (INFO stats). */
  netIn: number;
  netOut: number;
}

/** Reads a snapshot from INFO cpu, commandstats, memory, keyspace and stats answers. */
export function nodeSnapshot(info: {
  cpu: string;
  commandstats: string;
  memory: string;
  keyspace: string;
  stats: string;
}): NodeSnapshot {
  const stats = infoFields(info.stats);
  const keys = [...infoFields(info.keyspace).values()].reduce(
    (a, v) => a + Number(/(?:^|,)keys=(\d+)/.exec(v)?.[1] ?? 0),
    0,
  );
  return {
    cpuUs: cpuMicros(info.cpu),
    commands: parseCommandStats(info.commandstats),
    usedMemory: Number(infoFields(info.memory).get("used_memory") ?? 0),
    keys,
    netIn: Number(stats.get("total_net_input_bytes") ?? 0),
    netOut: Number(stats.get("total_net_output_bytes") ?? 0),
  };
}

/** What a node did between two snapshots; the INFO/CLUSTER commands of the measurement itself left out. */
export interface NodeDelta {
  cpuUs: number;
  commands: number;
  byCommand: Record<string, number>;
  memoryBytes: number;
  keys: number;
  netInBytes: number;
  netOutBytes: number;
}

const OWN = new Set(["info", "cluster", "ping"]);

export function nodeDelta(a: NodeSnapshot, b: NodeSnapshot): NodeDelta {
  const byCommand: Record<string, number> = {};
  let commands = 0;
  for (const [k, v] of b.commands) {
    if (OWN.has(k)) continue;
    const d = v - (a.commands.get(k) ?? 0);
    if (d <= 0) continue;
    byCommand[k] = d;
    commands += d;
  }
  return {
    cpuUs: b.cpuUs - a.cpuUs,
    commands,
    byCommand,
    memoryBytes: b.usedMemory - a.usedMemory,
    keys: b.keys - a.keys,
    netInBytes: b.netIn - a.netIn,
    netOutBytes: b.netOut - a.netOut,
  };
}

// ---------------------------------------------------------------------------------
// shard arithmetic (docs/capacity.md, "Shards for a target rate")
// ---------------------------------------------------------------------------------

/**
 * Jobs per second one shard carries: the share of one core planned for, less what the
 * shard spends with no job at all (`idleUsPerSec`: cluster bus, timers, idle polls),
 * over Redis CPU per job on it.
 */
export function jobsPerShard(cpuUsPerJob: number, utilisation: number, idleUsPerSec = 0): number {
  if (!(cpuUsPerJob > 0)) throw new Error("Redis CPU per job must be positive");
  if (!(utilisation > 0 && utilisation <= 1)) throw new Error("utilisation is a share of one core, in (0, 1]");
  const room = utilisation * 1e6 - idleUsPerSec;
  if (!(room > 0)) throw new Error("the shard's idle cost takes the whole planned share");
  return room / cpuUsPerJob;
}

/** Per-job Redis CPU (µs) by key family, as measured per shard. */
export interface FamilyCosts {
  /** The model's queue slot: BullMQ add/fetch/finish, inputs, settleFinal, outbox read/ack. */
  queue: number;
  /**
   * The tenant's slot with the families that spread like it (the client IP's buckets, the
   * processes' audit streams): rate buckets, quota reserve and release, audit records.
   */
  tenant: number;
  /** The deployment's own slot (`{citadel}`): one slot for the whole deployment. */
  deployment: number;
}

export interface ShardPlan {
  /** Shards the summed CPU needs, with the packing efficiency applied. */
  shards: number;
  /** Jobs/s one model's queue can reach: its slot lives on one shard. */
  maxPerModel: number;
  /** Jobs/s one tenant can reach: its slot lives on one shard. */
  maxPerTenant: number;
  /** Models needed at the least for the target (each at most maxPerModel). */
  minModels: number;
  /** Tenants needed at the least for the target. */
  minTenants: number;
  /** Jobs/s the whole deployment can reach before its own slot's shard is full (Infinity at no cost). */
  maxTotal: number;
  /** Redis CPU summed over all shards, in cores. */
  cores: number;
}

/**
 * Shards for `target` jobs/s: the CPU of every family summed, over what one shard may
 * use (`utilisation` of a core less its idle cost), divided by `packing` (how evenly slots spread over
 * shards: 1 when every shard is equally loaded; less with few hot slots), rounded up.
 * One model's queue and one tenant cannot go past one shard: the plan says how many
 * of each the target needs at the least; the deployment's own slot bounds the total.
 */
export function shardsFor(
  target: number,
  cost: FamilyCosts,
  opts: { utilisation: number; packing?: number; idleUsPerSec?: number },
): ShardPlan {
  const packing = opts.packing ?? 1;
  if (!(packing > 0 && packing <= 1)) throw new Error("packing is in (0, 1]");
  if (!(target >= 0)) throw new Error("target must be a rate ≥ 0");
  const perJob = cost.queue + cost.tenant + cost.deployment;
  const idle = opts.idleUsPerSec ?? 0;
  const core = opts.utilisation * 1e6 - idle;
  const maxPerModel = jobsPerShard(cost.queue, opts.utilisation, idle);
  const maxPerTenant = jobsPerShard(cost.tenant, opts.utilisation, idle);
  return {
    shards: Math.max(1, Math.ceil((target * perJob) / core / packing)),
    maxPerModel,
    maxPerTenant,
    minModels: Math.ceil(target / maxPerModel),
    minTenants: Math.ceil(target / maxPerTenant),
    maxTotal: cost.deployment > 0 ? jobsPerShard(cost.deployment, opts.utilisation, idle) : Number.POSITIVE_INFINITY,
    cores: (target * perJob) / 1e6,
  };
}

/** Median of a list (the lower middle one for an even count); NaN for none. */
export function medianOf(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] as number;
}

// ---------------------------------------------------------------------------------
// key families in a MONITOR trace (commands-probe.ts)
// ---------------------------------------------------------------------------------

export type Family = "queue" | "tenant" | "ip" | "audit" | "deployment" | "other";

/** A key's family under a deployment whose prefix is `{tag}` (docs/architecture.md, "Key families and slots"). */
export function familyOf(key: string, tag: string): Family {
  const m = /\{([^}]*)\}/.exec(key);
  const t = m?.[1];
  if (t === undefined) return "other";
  if (t === tag) return "deployment";
  for (const [mark, family] of [
    [":q:", "queue"],
    [":t:", "tenant"],
    [":ip:", "ip"],
    [":a:", "audit"],
  ] as const)
    if (t.startsWith(`${tag}${mark}`)) return family;
  return "other";
}

/** The key a command names first (after STREAMS for stream reads, after numkeys for scripts); null for none. */
export function firstKey(args: readonly string[]): string | null {
  const cmd = (args[0] ?? "").toLowerCase();
  const streams = args.findIndex((a) => a.toUpperCase() === "STREAMS");
  if (streams >= 0) return args[streams + 1] ?? null;
  if (cmd === "evalsha" || cmd === "eval" || cmd === "fcall") return Number(args[2]) > 0 ? (args[3] ?? null) : null;
  if (["multi", "exec", "discard", "ping", "info", "select", "client"].includes(cmd)) return null;
  return args[1] ?? null;
}

/**
 * Counts a MONITOR trace's commands by key family. MULTI and EXEC, which name no key,
 * count in the family of the next (MULTI) or previous (EXEC) keyed command of the same
 * connection: they are that transaction's cost.
 */
export function commandsByFamily(
  lines: readonly { source: string; args: readonly string[] }[],
  tag: string,
): Record<Family, number> {
  const out: Record<Family, number> = { queue: 0, tenant: 0, ip: 0, audit: 0, deployment: 0, other: 0 };
  const fam = lines.map((l) => {
    const k = firstKey(l.args);
    return k === null ? null : familyOf(k, tag);
  });
  const near = (i: number, step: 1 | -1): Family => {
    const source = lines[i]?.source;
    for (let j = i + step; j >= 0 && j < lines.length; j += step) {
      const f = fam[j];
      if (lines[j]?.source === source && f) return f;
    }
    return "other";
  };
  lines.forEach((l, i) => {
    const cmd = (l.args[0] ?? "").toLowerCase();
    const f = fam[i] ?? (cmd === "multi" ? near(i, 1) : cmd === "exec" ? near(i, -1) : "other");
    out[f]++;
  });
  return out;
}
