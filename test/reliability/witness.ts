/**
 * Evidence the system under test does not write itself: Redis's own MONITOR feed of
 * every command it executes, scripts' inner commands included. From BullMQ's Lua it
 * counts, per job id, how often the job's hash was stored (the add script's HMSET of
 * name/data) and how often the job was finished as completed (moveToFinished's
 * `XADD … event completed jobId <id>`); from each stored job's input bytes (the SET of
 * `<job key>:in` that precedes its add) it finds the logical request (a nonce the
 * scenario put in the input tensor). A logical request with two job ids, a job stored
 * twice or a job completed twice is a duplicate.
 *
 * The feed is collected as it happens (inputs leave Redis when a job ends). It attaches
 * over the harness's unix socket before Redis opens its TCP port, at the first start and
 * after every restart, so nothing another client runs goes unseen; the one blind spot,
 * commands executed in the instant before a SIGKILL whose MONITOR lines were not yet
 * sent, is read back from the restarted Redis's state (see `reconcile`).
 */
import { connect, type Socket } from "node:net";
import { keys } from "@citadel/queue";
import { Redis } from "ioredis";
import type { OwnRedis } from "../bench/harness.js";

/** One command Redis executed: its arguments and who ran it (`lua` inside a script). */
export interface Executed {
  args: string[];
  source: string;
}

type Listener = (c: Executed) => void;

/** Which logical request a job's stored input bytes belong to, if any. */
export type LogicalOf = (inputs: Buffer) => string | undefined;

/**
 * The bytes of a MONITOR argument. Redis prints each argument as a quoted C-like
 * string (sdscatrepr: `\\`, `\"`, `\n`, `\r`, `\t`, `\a`, `\b`, `\xhh`); ioredis
 * has already turned `\"` back into `"`.
 */
export function monitorBytes(arg: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < arg.length; i++) {
    const ch = arg.charCodeAt(i);
    if (ch !== 0x5c) {
      out.push(ch);
      continue;
    }
    const next = arg[++i];
    switch (next) {
      case "x":
        out.push(Number.parseInt(arg.slice(i + 1, i + 3), 16));
        i += 2;
        break;
      case "n":
        out.push(0x0a);
        break;
      case "r":
        out.push(0x0d);
        break;
      case "t":
        out.push(0x09);
        break;
      case "a":
        out.push(0x07);
        break;
      case "b":
        out.push(0x08);
        break;
      default:
        out.push((next ?? "").charCodeAt(0));
    }
  }
  return Buffer.from(out);
}

/**
 * MONITOR over a plain socket. (ioredis' monitor() loses its command queue when a busy
 * server's first MONITOR line arrives in the same read as its OK — a replica receiving a
 * sync, a Redis just restarted under load — and throws "Command queue state error" into
 * the test.) Each line is parsed as ioredis parses it: `+<time> [<db> <source>] "arg" …`.
 */
export function monitorSocket(
  at: { port: number } | { path: string },
  onCommand: (args: string[], source: string) => void,
): Promise<Socket> {
  const where = "port" in at ? `:${at.port}` : at.path;
  return new Promise((resolve, reject) => {
    const sock = "port" in at ? connect({ port: at.port, host: "127.0.0.1" }) : connect({ path: at.path });
    let buf = "";
    let ok = false;
    sock.setEncoding("latin1");
    sock.once("error", reject);
    sock.on("connect", () => sock.write("MONITOR\r\n"));
    sock.on("data", (chunk: string) => {
      buf += chunk;
      let end = buf.indexOf("\r\n");
      while (end >= 0) {
        const line = buf.slice(0, end);
        buf = buf.slice(end + 2);
        end = buf.indexOf("\r\n");
        if (!ok) {
          ok = line === "+OK";
          if (ok) {
            sock.removeListener("error", reject);
            sock.on("error", () => undefined);
            resolve(sock);
          } else reject(new Error(`MONITOR on ${where}: ${line}`));
          continue;
        }
        const space = line.indexOf(" ");
        const quote = line.indexOf('"');
        if (!line.startsWith("+") || space < 0 || quote < 0) continue;
        const source = line.slice(space + 2, quote - 2).split(" ")[1] ?? "";
        const args = line
          .slice(quote + 1, -1)
          .split('" "')
          .map((a) => a.replace(/\\"/g, '"'));
        onCommand(args, source);
      }
    });
  });
}

export class RedisWitness {
  private monitor: Socket | null = null;
  private readonly scopes = new Set<WitnessScope>();
  private readonly listeners = new Set<Listener>();
  /** Commands seen in all; a feed that sees nothing must not pass for a clean run. */
  seen = 0;

  private constructor(private readonly redis: OwnRedis) {}

  /** Attaches now and again before every restart of `redis` opens its port. */
  static async attach(redis: OwnRedis): Promise<RedisWitness> {
    const w = new RedisWitness(redis);
    redis.beforeListen(() => w.reattach());
    await w.connect();
    return w;
  }

  /** Evidence for one fleet (its key prefix) and its model queues. */
  scope(prefix: string, models: string[], logicalOf?: LogicalOf): WitnessScope {
    const s = new WitnessScope(prefix, models, logicalOf, () => this.scopes.delete(s));
    this.scopes.add(s);
    return s;
  }

  /** Calls `listener` for every executed command until the returned function is called. */
  watch(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** A connection of the harness's own (CLIENT PAUSE and the like), over the unix socket. */
  admin(): Redis {
    const r = new Redis({ path: this.redis.socket, maxRetriesPerRequest: 0, retryStrategy: () => null });
    r.on("error", () => undefined);
    return r;
  }

  /** Stops counting at once (lines still in flight are dropped) and closes the feed; a later restart of Redis attaches it again. */
  async close(): Promise<void> {
    this.detach();
  }

  private detach(): void {
    this.monitor?.removeAllListeners("data");
    this.monitor?.destroy();
    this.monitor = null;
  }

  private async reattach(): Promise<void> {
    this.detach();
    const admin = this.admin();
    try {
      for (const s of this.scopes) await s.reconcile(admin);
    } finally {
      admin.disconnect();
    }
    await this.connect();
  }

  private async connect(): Promise<void> {
    // No reconnects of its own: after a restart `reattach` runs before the port opens.
    this.monitor = await monitorSocket({ path: this.redis.socket }, (args, source) => {
      this.seen++;
      const c = { args, source };
      for (const s of this.scopes) s.observe(c);
      for (const l of this.listeners) l(c);
    });
  }
}

export class WitnessScope {
  /** Job id → times BullMQ stored its hash (added; a second time means it was added again). */
  readonly stored = new Map<string, number>();
  /** Job id → times BullMQ finished it as completed. */
  readonly completed = new Map<string, number>();
  /** Job id → times BullMQ finished it as failed (attempts exhausted or unrecoverable). */
  readonly failed = new Map<string, number>();
  /** Logical request → every job id stored for it. */
  readonly idsByLogical = new Map<string, Set<string>>();
  /** Job id → its logical request. */
  readonly logicalById = new Map<string, string>();
  /** Read back from a restarted Redis: executed just before a SIGKILL, MONITOR line never sent. */
  readonly unseen = { stored: 0, completed: 0 };
  /** Job id → the logical request its stored inputs name (known before the job itself is stored). */
  private readonly inputsOf = new Map<string, string>();
  private readonly queuePrefixes: string[];

  constructor(
    readonly prefix: string,
    readonly models: string[],
    private readonly logicalOf: LogicalOf | undefined,
    readonly close: () => void,
  ) {
    // Every key of a model's queue starts with this (names.ts builds them; BullMQ keeps them in one slot).
    this.queuePrefixes = models.map((m) => keys.bull(prefix, m, ""));
  }

  private queueOf(key: string | undefined): string | undefined {
    return key === undefined ? undefined : this.queuePrefixes.find((q) => key.startsWith(q));
  }

  observe(c: Executed): void {
    const cmd = c.args[0]?.toLowerCase();
    const key = c.args[1];
    const q = this.queueOf(key);
    if (!q || key === undefined) return;
    if (c.source !== "lua") {
      // A job's input bytes, written just before it is added.
      if (cmd === "set" && key.endsWith(":in") && c.args[2] !== undefined) {
        const logical = this.logicalOf?.(monitorBytes(c.args[2]));
        if (logical !== undefined) this.inputsOf.set(key.slice(q.length, -3), logical);
      }
      return;
    }
    if (cmd === "hmset" && c.args[2] === "name" && c.args[4] === "data") {
      this.store(key.slice(q.length));
    } else if (cmd === "xadd" && key === `${q}events`) {
      const at = c.args.indexOf("event");
      const event = c.args[at + 1];
      const id = c.args[at + 2] === "jobId" ? c.args[at + 3] : undefined;
      if (at < 0 || !id) return;
      if (event === "completed") this.completed.set(id, (this.completed.get(id) ?? 0) + 1);
      else if (event === "failed") this.failed.set(id, (this.failed.get(id) ?? 0) + 1);
    }
  }

  private store(id: string): void {
    this.stored.set(id, (this.stored.get(id) ?? 0) + 1);
    const logical = this.inputsOf.get(id);
    if (logical === undefined) return;
    this.logicalById.set(id, logical);
    const ids = this.idsByLogical.get(logical) ?? new Set<string>();
    ids.add(id);
    this.idsByLogical.set(logical, ids);
  }

  /**
   * After a SIGKILL, Redis may have executed (and persisted) a last few commands whose
   * MONITOR lines never left it. Before the restarted Redis opens its port, jobs it holds
   * that the feed never saw stored, and jobs in the completed set never seen completed,
   * are counted from its state (and reported as such).
   */
  async reconcile(admin: Redis): Promise<void> {
    for (const q of this.queuePrefixes) {
      const [wait, active, paused, ...sets] = await Promise.all([
        admin.lrange(`${q}wait`, 0, -1),
        admin.lrange(`${q}active`, 0, -1),
        admin.lrange(`${q}paused`, 0, -1),
        admin.zrange(`${q}completed`, 0, -1),
        admin.zrange(`${q}failed`, 0, -1),
        admin.zrange(`${q}delayed`, 0, -1),
        admin.zrange(`${q}prioritized`, 0, -1),
      ]);
      for (const id of new Set([...wait, ...active, ...paused, ...sets.flat()])) {
        if (this.stored.has(id)) continue;
        this.unseen.stored++;
        const inputs = await admin.getBuffer(`${q}${id}:in`);
        const logical = inputs ? this.logicalOf?.(inputs) : undefined;
        if (logical !== undefined) this.inputsOf.set(id, logical);
        this.store(id);
      }
      for (const id of sets[0] ?? []) {
        if (this.completed.has(id)) continue;
        this.unseen.completed++;
        this.completed.set(id, 1);
      }
    }
  }
}
