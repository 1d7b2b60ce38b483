import { Cluster, Redis } from "ioredis";
import { afterAll, describe, expect, it } from "vitest";
import { bullConnection, isRedisUnavailable, type RedisConn, redisClient, redisEndpoint } from "./redis.js";

const opened: RedisConn[] = [];
afterAll(() => {
  for (const c of opened) c.disconnect();
});

describe("redisEndpoint", () => {
  it("reads a single Redis URL as it is", () => {
    expect(redisEndpoint("redis://u:p@h:1/2")).toEqual({ url: "redis://u:p@h:1/2", tls: false });
    expect(redisEndpoint({ REDIS_URL: "rediss://h:1" })).toEqual({ url: "rediss://h:1", tls: true });
  });

  it("reads a cluster URL's nodes, user, password (decoded) and TLS", () => {
    expect(redisEndpoint("rediss+cluster://api:p%40ss:w@a:7000,b,[::1]:7002/0")).toEqual({
      nodes: [
        { host: "a", port: 7000 },
        { host: "b", port: 6379 },
        { host: "::1", port: 7002 },
      ],
      username: "api",
      password: "p@ss:w",
      tls: true,
    });
  });

  it("takes REDIS_CLUSTER_NODES beside REDIS_URL's credentials", () => {
    expect(
      redisEndpoint({ REDIS_URL: "redis://worker:s3cret@ignored:6379", REDIS_CLUSTER_NODES: ["n1:7000", "n2:7001"] }),
    ).toEqual({
      nodes: [
        { host: "n1", port: 7000 },
        { host: "n2", port: 7001 },
      ],
      username: "worker",
      password: "s3cret",
      tls: false,
    });
  });

  it("never quotes the URL in its errors", () => {
    expect(() => redisEndpoint("redis+cluster://u:hunter2@a:99999")).toThrow(/not host:port/);
    expect(() => redisEndpoint("not a url hunter2")).toThrow(/^REDIS_URL is not a URL$/);
  });
});

describe("the connection factory", () => {
  it("makes a Cluster for a cluster target, with the per-kind retry setting on each node", () => {
    const bull = bullConnection("redis+cluster://u:p@127.0.0.1:1", () => undefined, { lazyConnect: true });
    const plain = redisClient({ REDIS_URL: "redis://u:p@x:1", REDIS_CLUSTER_NODES: ["127.0.0.1:1"] }, () => undefined, {
      lazyConnect: true,
      enableOfflineQueue: false,
    });
    opened.push(bull, plain);
    expect(bull).toBeInstanceOf(Cluster);
    expect(plain).toBeInstanceOf(Cluster);
    const b = (bull as Cluster).options;
    const p = (plain as Cluster).options;
    // BullMQ reads maxRetriesPerRequest from redisOptions on a cluster and needs it null.
    expect(b.redisOptions?.maxRetriesPerRequest).toBeNull();
    expect(p.redisOptions?.maxRetriesPerRequest).toBe(1);
    expect(p.redisOptions).toMatchObject({ username: "u", password: "p" });
    expect(p.enableOfflineQueue).toBe(false);
    expect(p.redisOptions).not.toHaveProperty("enableOfflineQueue");
  });

  it("makes a plain Redis for a single-Redis target", () => {
    const r = redisClient("redis://127.0.0.1:1", () => undefined, { lazyConnect: true });
    opened.push(r);
    expect(r).toBeInstanceOf(Redis);
  });
});

describe("isRedisUnavailable", () => {
  it("counts a cluster without quorum or slot map as unavailable, not a bug", () => {
    for (const m of [
      "CLUSTERDOWN The cluster is down",
      "TRYAGAIN Multiple keys request during rehashing of slot",
      "Failed to refresh slots cache.",
      "None of startup nodes is available",
      "Cluster isn't ready and enableOfflineQueue options is false",
      "Too many Cluster redirections. Last error: Error: Connection is closed.",
    ])
      expect(isRedisUnavailable(new Error(m)), m).toBe(true);
    const all = new Error("Failed to refresh slots cache.");
    all.name = "ClusterAllFailedError";
    expect(isRedisUnavailable(all)).toBe(true);
    expect(isRedisUnavailable(new Error("ERR wrong number of arguments"))).toBe(false);
  });

  it("counts a master refusing writes for want of in-sync replicas (min-replicas-to-write) as unavailable", () => {
    expect(isRedisUnavailable(new Error("NOREPLICAS Not enough good replicas to write."))).toBe(true);
  });
});
