/**
 * Failover on a Redis Cluster (issue 14 point 4): the fleet (API and two workers as child
 * processes) on a local cluster of 3 masters and 3 replicas (test/support/redis-cluster.ts)
 * under a steady keyed submit load, while the master that serves the model queue's slot
 * is SIGKILLed. Two faults, one row each:
 *
 *  1. plain failover: the master is killed, its replica (in sync) is promoted;
 *  2. lagging replica, then no master: the replica is cut off first (SIGSTOP, and the
 *     master drops it once its replication buffer overflows), jobs are accepted that
 *     only the master holds, the master is killed and the slot has no master until the
 *     replica resumes and is promoted with its stale data.
 *
 * Replication is asynchronous, so writes acknowledged before a failover can vanish.
 * The clients act as a careful client should: every submission carries an
 * Idempotency-Key and is sent again with it after a 503 or a network error; a job that
 * answers 404 after its 202 (it vanished with the master) is submitted again with its
 * key. Counted: lost acknowledged writes (measured: ids answered 202 whose job is gone),
 * how many of them the retry recovered, the 503s and time without a master, and what
 * Redis itself executed, from a MONITOR on every node (a master runs BullMQ's scripts:
 * their inner commands show as `lua` there; a replica only applies their effects).
 */
import { randomBytes } from "node:crypto";
import type { Socket } from "node:net";
import { buildConvNet } from "@citadel/onnx";
import { keys } from "@citadel/queue";
import { Redis } from "ioredis";
import {
  apiEnv,
  b64,
  freePort,
  type Proc,
  type ResultView,
  randomInput,
  say,
  setupFleet,
  sleep,
  startProc,
  workerEnv,
} from "../bench/harness.js";
import { type LocalCluster, startRedisCluster } from "../support/redis-cluster.js";
import { dropPrefix, type Row, waitIdle } from "./scenarios.js";
import { monitorSocket, WitnessScope } from "./witness.js";

const MODEL = "conv";
const DIMS = [3, 32, 32];
const TENANT = "bench";
const INPUT_LEN = DIMS.reduce((a, b) => a * b, 1);

// ---------------------------------------------------------------------------------
// the cluster, as its nodes describe it
// ---------------------------------------------------------------------------------

interface NodeLine {
  id: string;
  port: number;
  flags: string[];
  masterId: string;
  slots: [number, number][];
}

/** Parses CLUSTER NODES. */
export function parseClusterNodes(text: string): NodeLine[] {
  return text
    .trim()
    .split("\n")
    .filter((l) => l !== "")
    .map((line) => {
      const f = line.split(" ");
      const slots: [number, number][] = [];
      for (const s of f.slice(8)) {
        if (s.startsWith("[")) continue; // a slot being migrated
        const [a, b] = s.split("-").map(Number);
        if (a !== undefined && !Number.isNaN(a)) slots.push([a, b ?? a]);
      }
      return {
        id: f[0] ?? "",
        port: Number(/:(\d+)@/.exec(f[1] ?? "")?.[1] ?? 0),
        flags: (f[2] ?? "").split(","),
        masterId: f[3] ?? "-",
        slots,
      };
    });
}

/** The node (port) a view of the cluster says serves `slot` as a master not flagged failing, if any. */
export function masterOfSlot(nodes: NodeLine[], slot: number): number | undefined {
  return nodes.find(
    (n) =>
      n.flags.includes("master") &&
      !n.flags.includes("fail") &&
      !n.flags.includes("fail?") &&
      n.slots.some(([a, b]) => slot >= a && slot <= b),
  )?.port;
}

class ClusterAdmin {
  private readonly conns = new Map<number, Redis>();
  constructor(private readonly cluster: LocalCluster) {}

  conn(port: number): Redis {
    let c = this.conns.get(port);
    if (!c) {
      // Bounded: a node the scenario stopped (SIGSTOP) never answers.
      c = new Redis({ port, host: "127.0.0.1", maxRetriesPerRequest: 0, commandTimeout: 3000, lazyConnect: true });
      c.on("error", () => undefined);
      this.conns.set(port, c);
    }
    return c;
  }

  /** The nodes' ports that are running (not killed or stopped by the scenario). */
  livePorts(exclude: number[] = []): number[] {
    return this.cluster.nodes.filter((n) => !n.stopped && !exclude.includes(n.port)).map((n) => n.port);
  }

  /** CLUSTER NODES as seen by the first live node that answers (not one of `exclude`). */
  async nodes(exclude: number[] = []): Promise<NodeLine[]> {
    for (const port of this.livePorts(exclude)) {
      const text = await this.conn(port)
        .call("CLUSTER", "NODES")
        .then(String)
        .catch(() => null);
      if (text) return parseClusterNodes(text);
    }
    throw new Error("no cluster node answers CLUSTER NODES");
  }

  async slot(key: string): Promise<number> {
    for (const port of this.livePorts()) {
      const s = await this.conn(port)
        .call("CLUSTER", "KEYSLOT", key)
        .catch(() => null);
      if (s !== null) return Number(s);
    }
    throw new Error("no cluster node answers CLUSTER KEYSLOT");
  }

  /** Every live node other than `exclude` agrees `port` is the slot's master. */
  async agreed(slot: number, port: number, exclude: number[]): Promise<boolean> {
    for (const p of this.livePorts(exclude)) {
      const text = await this.conn(p)
        .call("CLUSTER", "NODES")
        .then(String)
        .catch(() => null);
      if (!text || masterOfSlot(parseClusterNodes(text), slot) !== port) return false;
    }
    return true;
  }

  async replicaOf(masterPort: number): Promise<number> {
    const nodes = await this.nodes();
    const master = nodes.find((n) => n.port === masterPort);
    const replica = nodes.find((n) => n.masterId === master?.id && !n.flags.includes("fail"));
    if (!replica) throw new Error(`no replica of the master on ${masterPort}`);
    return replica.port;
  }

  close(): void {
    for (const c of this.conns.values()) c.disconnect();
  }
}

// ---------------------------------------------------------------------------------
// witness: a MONITOR on every node
// ---------------------------------------------------------------------------------

class ClusterWitness {
  private readonly monitors = new Map<number, Socket>();
  /** Node incarnation (`port#n`, a restarted node is a new one) → what it executed for the fleet's queue. */
  readonly byNode = new Map<string, WitnessScope>();
  /** Port → its current incarnation. */
  private readonly current = new Map<number, string>();
  /** Incarnations SIGKILLed (what they executed may have died with them). */
  readonly killed = new Set<string>();

  constructor(
    private readonly prefix: string,
    private readonly logicalOf: (inputs: Buffer) => string | undefined,
  ) {}

  /** Starts a MONITOR on a node that just started (a new incarnation). */
  async attach(port: number): Promise<void> {
    this.monitors.get(port)?.destroy();
    const name = `${port}#${this.byNode.size}`;
    const scope = new WitnessScope(this.prefix, [MODEL], this.logicalOf, () => undefined);
    this.byNode.set(name, scope);
    this.current.set(port, name);
    this.monitors.set(port, await monitorSocket({ port }, (args, source) => scope.observe({ args, source })));
  }

  markKilled(port: number): void {
    const name = this.current.get(port);
    if (name) this.killed.add(name);
  }

  close(): void {
    for (const m of this.monitors.values()) {
      m.removeAllListeners("data");
      m.destroy();
    }
    this.monitors.clear();
  }
}

// ---------------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------------

interface Answer {
  status: number;
  id?: string;
  code?: string;
  retryAfter?: string;
  /** When the request was sent and answered (epoch ms). */
  sent: number;
  answered: number;
}

/** A fault's ledger: logical requests (Idempotency-Keys) and what their clients were told. */
class PhaseLedger {
  readonly keys: string[] = [];
  /** Key → the ids it was answered with, in order (a resubmission after a vanished job may add one). */
  readonly ids = new Map<string, string[]>();
  /** Key → the first 202 and when it came. */
  readonly firstAccepted = new Map<string, number>();
  readonly answers: Answer[] = [];
  resent = 0;
  /** Requests whose client has not had its final answer yet. */
  open = 0;
  /** After settling: each accepted key's outcome, and the keys whose job had vanished. */
  readonly finals = new Map<string, Final>();
  readonly vanished = new Set<string>();
  recovered = 0;
  sameIdAgain = 0;
  constructor(readonly name: string) {}
  accepted(): string[] {
    return this.keys.filter((k) => this.ids.has(k));
  }
}

async function submitOnce(base: string, apiKey: string, body: string, key: string): Promise<Answer> {
  const sent = Date.now();
  try {
    const res = await fetch(`${base}/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json", "idempotency-key": key },
      body,
      signal: AbortSignal.timeout(15_000),
    });
    const json = (await res.json().catch(() => ({}))) as { id?: string; error?: { code?: string } };
    const retryAfter = res.headers.get("retry-after");
    return {
      status: res.status,
      sent,
      answered: Date.now(),
      ...(json.id ? { id: json.id } : {}),
      ...(json.error?.code ? { code: json.error.code } : {}),
      ...(retryAfter ? { retryAfter } : {}),
    };
  } catch {
    return { status: 0, code: "NETWORK", sent, answered: Date.now() };
  }
}

type Final = { kind: "final"; view: ResultView } | { kind: "vanished" } | { kind: "unsettled" };

/** Long-polls a job until it is final, answers 404 (gone), or the deadline passes. */
async function settle(base: string, apiKey: string, id: string, deadline: number): Promise<Final> {
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${base}/v1/jobs/${id}?wait=5000`, {
        headers: { authorization: `Bearer ${apiKey}` },
        signal: AbortSignal.timeout(20_000),
      });
      const view = (await res.json()) as ResultView;
      if (res.status === 404) return { kind: "vanished" };
      if (res.status === 200 && view.status !== "queued" && view.status !== "active") return { kind: "final", view };
      if (res.status !== 200) await sleep(200);
    } catch {
      await sleep(200);
    }
  }
  return { kind: "unsettled" };
}

// ---------------------------------------------------------------------------------
// the scenario
// ---------------------------------------------------------------------------------

export interface FailoverReport {
  rows: Row[];
  /** Per fault: the figures docs/reliability.md quotes. */
  figures: Record<string, Record<string, number | string>>;
}

export async function clusterFailover(opts: { short: boolean }): Promise<FailoverReport> {
  const cluster = await startRedisCluster({ log: (m) => say(`  ${m}`) });
  const admin = new ClusterAdmin(cluster);
  const prefix = `{rel-failover-${randomBytes(3).toString("hex")}}`;
  const byInput = new Map<string, string>();
  const bodies = new Map<string, string>();
  const witness = new ClusterWitness(prefix, (inputs) => byInput.get(inputs.toString("base64")));
  const procs: Proc[] = [];
  let stopLoad = true;
  let closeSetup: () => Promise<void> = async () => undefined;
  try {
    for (const n of cluster.nodes) await witness.attach(n.port);
    const setup = await setupFleet({ redisUrl: cluster.url, prefix });
    closeSetup = () => setup.close();
    await setup.publish(buildConvNet(), {
      name: MODEL,
      version: "1",
      spec: { maxBatch: 16, maxQueueDelayMs: 2, executionProviders: ["cpu"], inputs: { x: { range: [-10, 10] } } },
    });
    const apiPort = await freePort();
    const api = await startProc(
      "api",
      "failover-api",
      apiEnv(setup.env, apiPort, { JOB_BACKOFF_MS: "200" }),
      setup.logDir,
      apiPort,
    );
    procs.push(api);
    for (const w of [1, 2]) {
      const port = await freePort();
      procs.push(
        await startProc(
          "worker",
          `failover-worker-${w}`,
          workerEnv(setup.env, port, `failover-w${w}`, { LOCK_DURATION_MS: "3000", SHUTDOWN_TIMEOUT_MS: "3000" }),
          setup.logDir,
          port,
        ),
      );
    }

    // Which master to kill: the one serving the model queue's slot (its jobs, inputs and
    // results live there). The tenant's keys (Idempotency-Keys, quota) are located too:
    // whether they share that master decides what a retry finds after a loss.
    const queueSlot = await admin.slot(keys.bull(prefix, MODEL, "wait"));
    const tenantSlot = await admin.slot(keys.idempotency(prefix, TENANT, "0".repeat(64)));
    const quotaSlot = await admin.slot(keys.tenantQueuedJobs(prefix, TENANT));
    const slotMaster = async (slot: number) => masterOfSlot(await admin.nodes(), slot);
    const placement = `queue keys in slot ${queueSlot} (master :${await slotMaster(queueSlot)}), Idempotency-Keys in slot ${tenantSlot} (master :${await slotMaster(tenantSlot)}), tenant quota in slot ${quotaSlot} (master :${await slotMaster(quotaSlot)})`;
    say(`  failover: ${placement}`);

    // Load: keyed submissions, each sent again with its key after a 503 or a network error.
    const phases = [new PhaseLedger("plain"), new PhaseLedger("lagging")];
    let phase = phases[0] as PhaseLedger;
    let seq = 0;
    stopLoad = false;
    /** Between the faults no new request starts (the first fault's are being settled). */
    let paused = false;
    const client = async () => {
      while (!stopLoad) {
        if (paused) {
          await sleep(20);
          continue;
        }
        const i = seq++;
        const ledger = phase;
        const key = `failover-${i}`;
        const data = b64(randomInput(INPUT_LEN, 10_000 + i));
        byInput.set(data, key);
        const body = JSON.stringify({ model: MODEL, inputs: { x: { dtype: "float32", shape: [1, ...DIMS], data } } });
        bodies.set(key, body);
        ledger.keys.push(key);
        ledger.open++;
        for (let attempt = 0; ; attempt++) {
          if (attempt > 0) ledger.resent++;
          const a = await submitOnce(api.url, setup.apiKey, body, key);
          ledger.answers.push(a);
          if (a.status === 202 && a.id) {
            ledger.ids.set(key, [a.id]);
            ledger.firstAccepted.set(key, a.answered);
            break;
          }
          if (a.status >= 400 && a.status < 500) break;
          // Still refused when the load stops: the client gives up (counted as not accepted).
          if (stopLoad && attempt > 300) break;
          await sleep(200);
        }
        ledger.open--;
      }
    };
    /**
     * Settles every accepted request of a fault once its clients are done: long-polls its
     * job; a job that answers 404 after its 202 vanished with a master, and its client
     * submits it again with its key and settles that.
     */
    const settleLedger = async (ledger: PhaseLedger) => {
      const until = Date.now() + 120_000;
      while (ledger.open > 0 && Date.now() < until) await sleep(50);
      const deadline = Date.now() + (opts.short ? 60_000 : 120_000);
      const accepted = ledger.accepted();
      let next = 0;
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          for (;;) {
            const key = accepted[next++];
            if (!key) return;
            const ids = ledger.ids.get(key) as string[];
            let f = await settle(api.url, setup.apiKey, ids[0] as string, deadline);
            if (f.kind === "vanished") {
              ledger.vanished.add(key);
              for (let attempt = 0; attempt < 300; attempt++) {
                ledger.resent++;
                const a = await submitOnce(api.url, setup.apiKey, bodies.get(key) ?? "", key);
                if (a.status === 202 && a.id) {
                  if (a.id === ids[0]) ledger.sameIdAgain++;
                  ids.push(a.id);
                  f = await settle(api.url, setup.apiKey, a.id, deadline);
                  break;
                }
                if (a.status >= 400 && a.status < 500) break;
                await sleep(200);
              }
              if (f.kind === "final") ledger.recovered++;
            }
            ledger.finals.set(key, f);
          }
        }),
      );
    };
    const clients = Array.from({ length: 3 }, client);
    const acceptedSince = (ledger: PhaseLedger, t: number) =>
      [...ledger.firstAccepted.values()].filter((at) => at >= t).length;
    const waitAccepted = async (ledger: PhaseLedger, t: number, n: number, what: string) => {
      const end = Date.now() + 120_000;
      while (acceptedSince(ledger, t) < n) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${n} jobs accepted ${what}`);
        await sleep(50);
      }
    };
    const waitFor = async (what: string, cond: () => Promise<boolean>, ms: number) => {
      const end = Date.now() + ms;
      while (!(await cond())) {
        if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await sleep(50);
      }
    };
    const load = opts.short ? 40 : 300;
    const figures: FailoverReport["figures"] = {};
    const checks = new Map<string, Row["checks"]>(phases.map((p) => [p.name, []]));
    const windows = new Map<string, { from: number; to: number }>();

    // ---- 1. plain failover ------------------------------------------------------
    const tStart = Date.now();
    await waitAccepted(phases[0] as PhaseLedger, tStart, load, "before the first fault");
    const m1 = (await slotMaster(queueSlot)) as number;
    const r1 = await admin.replicaOf(m1);
    say(`  failover: SIGKILL master :${m1} (slot ${queueSlot}); its replica :${r1} should take over`);
    const node1 = cluster.nodes.find((n) => n.port === m1);
    const kill1 = Date.now();
    node1?.child.kill("SIGKILL");
    if (node1) node1.stopped = true;
    witness.markKilled(m1);
    await waitFor("the replica to be promoted", () => admin.agreed(queueSlot, r1, []), 60_000);
    const promoted1 = Date.now();
    windows.set("plain", { from: kill1, to: promoted1 });
    say(`  failover: :${r1} serves slot ${queueSlot} after ${promoted1 - kill1} ms`);
    await waitAccepted(phases[0] as PhaseLedger, promoted1, load, "after the promotion");
    // The killed node comes back (empty) as the new master's replica.
    await cluster.restart();
    await witness.attach(m1);
    await waitFor(
      "the old master to rejoin as a replica in sync",
      async () => {
        const info = await admin
          .conn(m1)
          .info("replication")
          .catch(() => "");
        return (
          /role:slave/.test(info) &&
          /master_link_status:up/.test(info) &&
          /master_port:(\d+)/.exec(info)?.[1] === String(r1)
        );
      },
      60_000,
    );
    figures.plain = { killed: `:${m1}`, promoted: `:${r1}`, withoutMasterMs: promoted1 - kill1 };

    // ---- 2. lagging replica, then no master ------------------------------------
    // New requests belong to the second fault; the first one's are settled before it
    // (a job of theirs that vanished there would be the second fault's loss).
    paused = true;
    phase = phases[1] as PhaseLedger;
    await settleLedger(phases[0] as PhaseLedger);
    paused = false;
    const tLag = Date.now();
    await waitAccepted(phase, tLag, load, "before the second fault");
    const m2 = r1;
    const r2 = m1;
    const r2node = cluster.nodes.find((n) => n.port === r2);
    const m2node = cluster.nodes.find((n) => n.port === m2);
    // A replica cut off for longer than cluster-node-timeout × validity factor would refuse
    // to take over; 0 lets it (the choice that trades acknowledged writes for availability).
    await admin.conn(r2).config("SET", "cluster-replica-validity-factor", "0");
    // How far behind the replica is when it stops: what it has applied is what survives.
    const offsets = async () => {
      const [m, r] = await Promise.all([admin.conn(m2).info("replication"), admin.conn(r2).info("replication")]);
      const at = (info: string, field: string) => Number(new RegExp(`${field}:(\\d+)`).exec(info)?.[1] ?? -1);
      return {
        master: at(m, "master_repl_offset"),
        replica: at(r, "master_repl_offset"),
        link: /master_link_status:up/.test(r),
      };
    };
    const atStop = await offsets();
    const stopped = Date.now();
    say(`  failover: SIGSTOP replica :${r2}; master :${m2} keeps accepting until it drops the replica`);
    r2node?.child.kill("SIGSTOP");
    // Capped only now: a replica merely slow under load is not dropped before it stops.
    await admin.conn(m2).config("SET", "client-output-buffer-limit", "replica 256kb 256kb 0");
    // Filler in the queue's own slot (not a Citadel key the witness counts) until the
    // master's replication buffer overflows and it drops the replica.
    const filler = randomBytes(1 << 20);
    let fillers = 0;
    await waitFor(
      "the master to drop its stopped replica",
      async () => {
        const info = await admin.conn(m2).info("replication");
        if (/connected_slaves:0/.test(info)) return true;
        await admin.conn(m2).set(keys.bull(prefix, MODEL, `failover-filler-${fillers++}`), filler);
        return false;
      },
      60_000,
    );
    for (let f = 0; f < fillers; f++) await admin.conn(m2).del(keys.bull(prefix, MODEL, `failover-filler-${f}`));
    const cut = Date.now();
    // Acknowledged now, these writes are on the master alone.
    await waitAccepted(phase, cut, opts.short ? 20 : 100, "while the replica is cut off");
    say(`  failover: SIGKILL master :${m2}; replica :${r2} stays stopped: slot ${queueSlot} has no master`);
    const kill2 = Date.now();
    m2node?.child.kill("SIGKILL");
    if (m2node) m2node.stopped = true;
    witness.markKilled(m2);
    await waitFor(
      "the cluster to mark the master failed",
      async () => {
        const nodes = await admin.nodes([r2]);
        return nodes.find((n) => n.port === m2)?.flags.includes("fail") === true;
      },
      60_000,
    );
    const noMaster = Date.now();
    // While no node serves the slot: submissions and a status read must answer 503.
    const probed: Answer[] = [];
    const someId = (phases[0] as PhaseLedger).ids.values().next().value?.[0] ?? "";
    const reads: number[] = [];
    const probe = async (n: number) => {
      const key = `failover-probe-${n}`;
      const data = b64(randomInput(INPUT_LEN, 90_000 + n));
      byInput.set(data, key);
      const body = JSON.stringify({ model: MODEL, inputs: { x: { dtype: "float32", shape: [1, ...DIMS], data } } });
      bodies.set(key, body);
      phase.keys.push(key);
      probed[n] = await submitOnce(api.url, setup.apiKey, body, key);
    };
    const read = async () => {
      reads.push(
        await fetch(`${api.url}/v1/jobs/${someId}`, {
          headers: { authorization: `Bearer ${setup.apiKey}` },
          signal: AbortSignal.timeout(15_000),
        }).then(
          (r) => r.status,
          () => 0,
        ),
      );
    };
    // Rounds of 5 submissions and a status read at once (each may take seconds to be
    // refused: the API's clients retry CLUSTERDOWN, bounded), for a while.
    const probeUntil = noMaster + (opts.short ? 2000 : 5000);
    while (Date.now() < probeUntil) {
      const n = probed.length;
      await Promise.all([...Array.from({ length: 5 }, (_, k) => probe(n + k)), read()]);
    }
    const probeBody = await fetch(`${api.url}/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${setup.apiKey}`, "content-type": "application/json" },
      // An input of its own, no key: refused, it is not one of the load's requests.
      body: JSON.stringify({
        model: MODEL,
        inputs: { x: { dtype: "float32", shape: [1, ...DIMS], data: b64(randomInput(INPUT_LEN, 1)) } },
      }),
      signal: AbortSignal.timeout(15_000),
    }).then(async (r) => ({ status: r.status, retryAfter: r.headers.get("retry-after"), body: await r.text() }));
    say(`  failover: SIGCONT replica :${r2}`);
    const resume = Date.now();
    r2node?.child.kill("SIGCONT");
    await waitFor("the stale replica to be promoted", () => admin.agreed(queueSlot, r2, [m2]), 60_000);
    const promoted2 = Date.now();
    windows.set("lagging", { from: kill2, to: promoted2 });
    say(`  failover: :${r2} serves slot ${queueSlot} ${promoted2 - kill2} ms after the kill`);
    // The probes were refused: like every client, they send again with their keys.
    for (const [i, p] of probed.entries()) {
      if (p.status === 202 && p.id) continue;
      const key = `failover-probe-${i}`;
      for (let attempt = 0; attempt < 300; attempt++) {
        phase.resent++;
        const a = await submitOnce(api.url, setup.apiKey, bodies.get(key) ?? "", key);
        if (a.status === 202 && a.id) {
          phase.ids.set(key, [a.id]);
          phase.firstAccepted.set(key, a.answered);
          break;
        }
        if (a.status >= 400 && a.status < 500) break;
        await sleep(200);
      }
    }
    for (const [i, p] of probed.entries())
      if (p.status === 202 && p.id) {
        phase.ids.set(`failover-probe-${i}`, [p.id]);
        phase.firstAccepted.set(`failover-probe-${i}`, p.answered);
      }
    await waitAccepted(phase, promoted2, load, "after the stale replica's promotion");
    stopLoad = true;
    await Promise.all(clients);
    const noMasterAnswers = probed.filter((p) => p.sent >= noMaster && p.answered <= resume);
    const lagChecks = checks.get("lagging") as Row["checks"];
    const statusesOf = (as: Answer[]) => {
      const by: Record<string, number> = {};
      for (const a of as) {
        const k = a.status === 0 ? "network" : `${a.status}${a.code ? ` ${a.code}` : ""}`;
        by[k] = (by[k] ?? 0) + 1;
      }
      return by;
    };
    lagChecks.push({
      name: "while the slot had no master, every submission answered 503 QUEUE_UNAVAILABLE with Retry-After (at least 5 did)",
      ok:
        noMasterAnswers.length >= 5 &&
        noMasterAnswers.every((a) => a.status === 503 && a.code === "QUEUE_UNAVAILABLE" && a.retryAfter !== undefined),
      detail: JSON.stringify(statusesOf(noMasterAnswers)),
    });
    lagChecks.push({
      name: "while the slot had no master, a job status read answered 503",
      ok: reads.length > 0 && reads.every((s) => s === 503),
      detail: reads.join(","),
    });
    lagChecks.push({
      name: "the 503 body names QUEUE_UNAVAILABLE and says to retry",
      ok: probeBody.status === 503 && /QUEUE_UNAVAILABLE/.test(probeBody.body) && probeBody.retryAfter !== null,
      detail: `${probeBody.status} retry-after ${probeBody.retryAfter} ${probeBody.body.slice(0, 200)}`,
    });
    figures.lagging = {
      killed: `:${m2}`,
      promoted: `:${r2}`,
      withoutMasterMs: promoted2 - kill2,
      failDetectedMs: noMaster - kill2,
      promotedAfterResumeMs: promoted2 - resume,
      replicaCutOffMs: kill2 - cut,
      fillerMb: fillers,
      slowest503Ms: Math.max(0, ...noMasterAnswers.map((a) => a.answered - a.sent)),
    };

    // ---- accounting -------------------------------------------------------------
    await waitIdle(setup.redis, prefix, [MODEL], opts.short ? 15_000 : 30_000, 300_000);
    const rows: Row[] = [];
    for (const ledger of phases) {
      const w = windows.get(ledger.name) as { from: number; to: number };
      if (ledger === phases[1]) await settleLedger(ledger);
      const accepted = ledger.accepted();
      const finals = ledger.finals;
      const vanished = ledger.vanished.size;
      const recovered = ledger.recovered;
      const sameIdAgain = ledger.sameIdAgain;
      const vanishedBeforeStop = [...ledger.vanished].filter(
        (k) => (ledger.firstAccepted.get(k) ?? 0) < stopped,
      ).length;
      const failed: Record<string, number> = {};
      let completed = 0;
      let lost = 0;
      for (const key of accepted) {
        const f = finals.get(key);
        if (f?.kind !== "final") {
          lost++;
          continue;
        }
        if (f.view.status === "completed") completed++;
        else {
          const code = f.view.error?.code ?? f.view.status.toUpperCase();
          failed[code] = (failed[code] ?? 0) + 1;
        }
      }
      // Executions, from what every node executed: a completion on a node that was then
      // SIGKILLed may have died with it (and the job ran again: at-least-once); two
      // completions of one logical request that both survive, or two on a node still
      // alive, are duplicates.
      let duplicated = 0;
      let reRun = 0;
      const dupDetail: string[] = [];
      for (const key of ledger.keys) {
        let onKilled = 0;
        let onLive = 0;
        let twiceOnOne = 0;
        for (const [node, scope] of witness.byNode) {
          for (const id of scope.idsByLogical.get(key) ?? []) {
            const n = scope.completed.get(id) ?? 0;
            if (witness.killed.has(node)) onKilled += n;
            else onLive += n;
            // One node completing one job twice is never a failover's doing.
            if (n > 1) twiceOnOne += n - 1;
          }
        }
        const extra = Math.max(0, onLive - 1, twiceOnOne);
        if (extra > 0) {
          duplicated += extra;
          dupDetail.push(`${key}: ${onLive} completion(s) on live nodes, ${onKilled} on killed ones`);
        }
        if (onKilled > 0 && onLive + onKilled > 1) reRun += onLive + onKilled - 1 - extra;
      }
      // Lost acknowledged writes: a 202 whose job answered 404 afterwards. Acknowledged
      // before the kill and gone: the master had not passed them on to the replica.
      const acksBeforeKill = accepted.filter((k) => (ledger.firstAccepted.get(k) ?? 0) <= w.from).length;
      const windowAnswers = ledger.answers.filter((a) => a.sent >= w.from && a.sent <= w.to);
      const row: Row = {
        fault:
          ledger.name === "plain"
            ? "cluster: master SIGKILL, replica promoted"
            : "cluster: replica cut off, master SIGKILL, no master, stale replica promoted",
        submitted: ledger.keys.length,
        accepted: accepted.length,
        completed,
        failed,
        lost,
        duplicated,
        checks: checks.get(ledger.name) ?? [],
        notes: [],
      };
      const storedSeen = accepted.filter((k) =>
        (ledger.ids.get(k) ?? []).some((id) => [...witness.byNode.values()].some((s) => s.stored.has(id))),
      ).length;
      row.checks.push({
        name: `Redis MONITOR (every node) saw every accepted job stored (${storedSeen}/${accepted.length})`,
        ok: storedSeen === accepted.length && accepted.length > 0,
      });
      row.checks.push({
        name: "no answer was a 500 (or any 5xx but 503) during the run",
        ok: ledger.answers.every((a) => a.status < 500 || a.status === 503),
        detail: JSON.stringify(statusesOf(ledger.answers.filter((a) => a.status >= 500))),
      });
      row.checks.push({
        name: `every job that vanished after its 202 was submitted again with its Idempotency-Key (${vanished} vanished, ${recovered} recovered)`,
        ok: recovered === vanished,
        ...(sameIdAgain ? { detail: `${sameIdAgain} enqueued again under their first id` } : {}),
      });
      row.checks.push({ name: "every accepted job ended completed", ok: completed === accepted.length });
      if (ledger.name === "lagging")
        row.checks.push({
          name: "the measurement sees a loss when there is one (jobs accepted while the replica was cut off vanished)",
          ok: vanished > 0,
          detail: `${vanished}`,
        });
      if (dupDetail.length) row.notes.push(`duplicates: ${dupDetail.slice(0, 5).join("; ")}`);
      const f = figures[ledger.name] ?? {};
      Object.assign(f, {
        answers503: windowAnswers.filter((a) => a.status === 503).length,
        networkErrors: windowAnswers.filter((a) => a.status === 0).length,
        acceptedBeforeKill: acksBeforeKill,
        lostAcknowledged: vanished,
        ...(ledger.name === "lagging"
          ? {
              lostAcknowledgedBeforeReplicaStop: vanishedBeforeStop,
              replicaBehindAtStopBytes: atStop.master - atStop.replica,
              replicaLinkUpAtStop: String(atStop.link),
            }
          : {}),
        recoveredByRetry: recovered,
        reRunAfterLostCompletion: reRun,
        resent: ledger.resent,
      });
      figures[ledger.name] = f;
      row.notes.push(
        `killed ${f.killed}, promoted ${f.promoted}: ${f.withoutMasterMs} ms without a master for slot ${queueSlot}; ${f.answers503} answers 503 and ${f.networkErrors} network errors from the kill to the promotion; ${ledger.resent} sends repeated with the same Idempotency-Key`,
      );
      row.notes.push(
        `lost acknowledged writes: ${vanished} (of ${acksBeforeKill} accepted before the kill), ${recovered} recovered by the client's retry with its Idempotency-Key; ${reRun} job(s) ran again because their completion died with the master`,
      );
      rows.push(row);
    }
    rows[0]?.notes.push(placement);
    // Jobs that never settled: which connections the workers still hold to the queue's
    // master, and what each last ran (a worker whose blocking fetch never came back).
    if (rows.some((r) => r.lost > 0)) {
      const master = await slotMaster(queueSlot);
      const list = master
        ? String(
            await admin
              .conn(master)
              .call("CLIENT", "LIST")
              .catch((e: unknown) => e),
          )
        : "no master";
      const bull = list
        .split("\n")
        .filter((l) => l.includes(`name=${prefix}`))
        .map((l) => `${/name=(\S*)/.exec(l)?.[1]} cmd=${/cmd=(\S*)/.exec(l)?.[1]} idle=${/idle=(\S*)/.exec(l)?.[1]}`);
      rows[rows.length - 1]?.notes.push(
        `jobs left unsettled; BullMQ connections on the queue's master :${master}: ${bull.length ? bull.join("; ") : "none"}`,
      );
    }
    const leaked = await setup.redis.get(keys.tenantQueuedJobs(prefix, TENANT)).catch(() => null);
    if (Number(leaked ?? 0) !== 0)
      rows[1]?.notes.push(
        `after the drain the tenant's queued-jobs counter reads ${leaked} (reservations of jobs that vanished with a master were not given back)`,
      );
    await Promise.all(procs.map((p) => p.stop()));
    procs.length = 0;
    await dropPrefix(setup.redis, prefix).catch(() => undefined);
    return { rows, figures };
  } finally {
    stopLoad = true;
    await closeSetup().catch(() => undefined);
    for (const n of cluster.nodes) if (n.stopped === false) n.child.kill("SIGCONT");
    witness.close();
    admin.close();
    await Promise.all(procs.map((p) => p.stop("SIGKILL").catch(() => undefined)));
    await cluster.stop();
  }
}
