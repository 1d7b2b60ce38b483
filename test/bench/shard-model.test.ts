/** The cluster capacity row's pure parts: key slots, INFO parsing, shard arithmetic (shard-model.ts). */
import { describe, expect, it } from "vitest";
import {
  commandsByFamily,
  cpuMicros,
  crc16,
  familyOf,
  firstKey,
  firstWhere,
  jobsPerShard,
  keySlot,
  medianOf,
  nodeDelta,
  nodeSnapshot,
  parseCommandStats,
  shardsFor,
  slotOwner,
} from "./shard-model.js";

describe("key slots", () => {
  it("CRC16 is XMODEM's (the check value of '123456789' is 0x31C3, as in the Redis Cluster spec)", () => {
    expect(crc16(new TextEncoder().encode("123456789"))).toBe(0x31c3);
  });

  it("hashes the hash tag when there is one, else the whole key (values CLUSTER KEYSLOT gives)", () => {
    expect(keySlot("foo")).toBe(12182);
    expect(keySlot("bar")).toBe(5061);
    expect(keySlot("{user1000}.following")).toBe(keySlot("user1000"));
    expect(keySlot("{citadel:q:tiny}:infer-tiny:wait")).toBe(keySlot("citadel:q:tiny"));
    // An empty tag does not count: the whole key is hashed.
    expect(keySlot("{}foo")).toBe(crc16(new TextEncoder().encode("{}foo")) % 16384);
    // Only the first tag counts.
    expect(keySlot("{a}{b}")).toBe(keySlot("a"));
  });

  it("maps slots to masters from CLUSTER SLOTS", () => {
    const owner = slotOwner([
      [0, 5460, ["127.0.0.1", 7000, "id0"], ["127.0.0.1", 7003, "id3"]],
      [5461, 10922, ["127.0.0.1", 7001, "id1"]],
      [10923, 16383, ["127.0.0.1", 7002, "id2"]],
    ]);
    expect([owner(0), owner(5460), owner(5461), owner(16383)]).toEqual([
      "127.0.0.1:7000",
      "127.0.0.1:7000",
      "127.0.0.1:7001",
      "127.0.0.1:7002",
    ]);
    expect(() => slotOwner([[0, 10, ["h", 1]]])(11)).toThrow(/no master serves slot 11/);
  });

  it("firstWhere takes the first candidate that fits, or says none did", () => {
    expect(firstWhere("even", [1, 3, 4, 6], (n) => n % 2 === 0)).toBe(4);
    expect(() => firstWhere("prefix", [1, 3], (n) => n > 5)).toThrow(/no prefix found/);
  });
});

const INFO_CPU = "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:0.500001\r\nused_cpu_sys_children:0.000000\r\n";
const STATS = [
  "# Commandstats",
  "cmdstat_evalsha:calls=10,usec=900,usec_per_call=90.00,rejected_calls=0,failed_calls=0",
  "cmdstat_xadd:calls=4,usec=20,usec_per_call=5.00,rejected_calls=0,failed_calls=0",
  "cmdstat_info:calls=2,usec=50,usec_per_call=25.00,rejected_calls=0,failed_calls=0",
  "cmdstat_client|setname:calls=1,usec=1,usec_per_call=1.00,rejected_calls=0,failed_calls=0",
].join("\r\n");

describe("INFO parsing", () => {
  it("reads CPU as µs of user + system time", () => {
    expect(cpuMicros(INFO_CPU)).toBe(1_750_001);
    expect(() => cpuMicros("# CPU\r\n")).toThrow(/used_cpu_sys/);
  });

  it("reads calls per command, subcommands included", () => {
    expect(Object.fromEntries(parseCommandStats(STATS))).toEqual({
      evalsha: 10,
      xadd: 4,
      info: 2,
      "client|setname": 1,
    });
  });

  it("a node's delta leaves out the measurement's own INFO and counts keys over every db", () => {
    const a = nodeSnapshot({
      cpu: INFO_CPU,
      commandstats: STATS,
      memory: "used_memory:1000\r\nused_memory_human:1K",
      keyspace: "# Keyspace\r\ndb0:keys=5,expires=1,avg_ttl=0",
      stats: "# Stats\r\ntotal_net_input_bytes:100\r\ntotal_net_output_bytes:200",
    });
    const b = nodeSnapshot({
      cpu: "used_cpu_sys:2.25\r\nused_cpu_user:0.500001",
      commandstats: STATS.replace("evalsha:calls=10", "evalsha:calls=25").replace("info:calls=2", "info:calls=9"),
      memory: "used_memory:4000",
      keyspace: "db0:keys=7,expires=1,avg_ttl=0\r\ndb1:keys=1,expires=0,avg_ttl=0",
      stats: "total_net_input_bytes:150\r\ntotal_net_output_bytes:1200\r\ntotal_net_repl_input_bytes:0",
    });
    expect(nodeDelta(a, b)).toEqual({
      cpuUs: 1_000_000,
      commands: 15,
      byCommand: { evalsha: 15 },
      memoryBytes: 3000,
      keys: 3,
      netInBytes: 50,
      netOutBytes: 1000,
    });
  });
});

describe("shard arithmetic", () => {
  it("jobs/s per shard is the planned share of a core over the CPU per job", () => {
    expect(jobsPerShard(100, 0.7)).toBeCloseTo(7000);
    expect(jobsPerShard(350, 0.7)).toBeCloseTo(2000);
    // A shard's idle cost (cluster bus, timers) comes off the top: (700,000 − 3,000) / 100.
    expect(jobsPerShard(100, 0.7, 3000)).toBeCloseTo(6970);
    expect(() => jobsPerShard(100, 0.7, 800_000)).toThrow(/idle/);
    expect(() => jobsPerShard(0, 0.7)).toThrow();
    expect(() => jobsPerShard(100, 1.5)).toThrow();
  });

  it("shards for a target: summed CPU over one shard's share, with packing; one model and one tenant per shard at most", () => {
    const plan = shardsFor(10_000, { queue: 200, tenant: 80, deployment: 20 }, { utilisation: 0.7 });
    // 10,000 × 300 µs = 3 cores of Redis CPU; 0.7 of a core per shard → 4.3 → 5.
    expect(plan.cores).toBeCloseTo(3);
    expect(plan.shards).toBe(5);
    expect(plan.maxPerModel).toBeCloseTo(3500);
    expect(plan.minModels).toBe(3);
    expect(plan.maxPerTenant).toBeCloseTo(8750);
    expect(plan.minTenants).toBe(2);
    expect(plan.maxTotal).toBeCloseTo(35_000);
    // Uneven slots: at 80 % packing, 4.3 / 0.8 → 6.
    expect(
      shardsFor(10_000, { queue: 200, tenant: 80, deployment: 20 }, { utilisation: 0.7, packing: 0.8 }).shards,
    ).toBe(6);
    // 3,000,000 µs/s over (700,000 − 50,000) per shard = 4.6 → 5.
    expect(
      shardsFor(10_000, { queue: 200, tenant: 80, deployment: 20 }, { utilisation: 0.7, idleUsPerSec: 50_000 }).shards,
    ).toBe(5);
    expect(
      shardsFor(10_000, { queue: 200, tenant: 80, deployment: 20 }, { utilisation: 0.7, idleUsPerSec: 101_000 }).shards,
    ).toBe(6);
    expect(shardsFor(1, { queue: 200, tenant: 80, deployment: 0 }, { utilisation: 0.7 })).toMatchObject({
      shards: 1,
      maxTotal: Number.POSITIVE_INFINITY,
    });
  });

  it("median of repeats", () => {
    expect(medianOf([3, 1, 2])).toBe(2);
    expect(medianOf([4, 1, 3, 2])).toBe(2);
    expect(medianOf([])).toBeNaN();
  });
});

describe("key families in a MONITOR trace", () => {
  it("names each key's family from its hash tag", () => {
    expect(familyOf("{bench:q:tiny}:infer-tiny:wait", "bench")).toBe("queue");
    expect(familyOf("{bench:t:acme}:queued-jobs", "bench")).toBe("tenant");
    expect(familyOf("{bench:ip:127.0.0.1}:rl:ip", "bench")).toBe("ip");
    expect(familyOf("{bench:a:api:vm:1:ab}:audit", "bench")).toBe("audit");
    expect(familyOf("{bench}:tenants:keys", "bench")).toBe("deployment");
    expect(familyOf("{other:q:x}:wait", "bench")).toBe("other");
    expect(familyOf("plain", "bench")).toBe("other");
  });

  it("finds the first key of scripts, stream reads and plain commands", () => {
    expect(firstKey(["evalsha", "abc", "2", "{b:t:x}:a", "{b:t:x}:b", "1"])).toBe("{b:t:x}:a");
    expect(firstKey(["evalsha", "abc", "0", "arg"])).toBeNull();
    expect(firstKey(["xreadgroup", "GROUP", "relay", "c", "COUNT", "128", "STREAMS", "{b:q:m}:outbox", ">"])).toBe(
      "{b:q:m}:outbox",
    );
    expect(firstKey(["GET", "{b}:x"])).toBe("{b}:x");
    expect(firstKey(["multi"])).toBeNull();
  });

  it("counts MULTI and EXEC with the transaction's keys, per connection", () => {
    const trace = [
      { source: "c1", args: ["multi"] },
      { source: "c2", args: ["get", "{b:q:m}:x"] },
      { source: "c1", args: ["xadd", "{b:a:w}:audit", "*", "r", "{}"] },
      { source: "c1", args: ["set", "{b:a:w}:audit:head", "1"] },
      { source: "c1", args: ["exec"] },
      { source: "lua", args: ["GETDEL", "{b:t:acme}:quota-held:1"] },
      { source: "c3", args: ["hget", "{b}:tenants:keys", "h"] },
    ];
    expect(commandsByFamily(trace, "b")).toEqual({ queue: 1, tenant: 1, ip: 0, audit: 4, deployment: 1, other: 0 });
  });
});
