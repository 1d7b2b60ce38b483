import type { TestProject } from "vitest/node";
import { findRedis, startRedisServer } from "../../scripts/redis.mjs";
import { startRedisContainer } from "./redis-container.js";

declare module "vitest" {
  export interface ProvidedContext {
    redisUrl: string;
    redisSource: string;
  }
}

/**
 * One Redis for the whole run: REDIS_URL, else 127.0.0.1:6379, else testcontainers
 * (when Docker works), else a spawned redis-server. Tests isolate by key prefix and
 * queue name, never by flushing a shared server.
 */
export default async function setup(project: TestProject) {
  const redis = (await findRedis()) ?? (await startRedisContainer()) ?? (await startRedisServer({ install: true }));
  project.provide("redisUrl", redis.url);
  project.provide("redisSource", redis.source);
  process.env.CITADEL_TEST_REDIS_URL = redis.url;
  return async () => {
    await redis.stop();
  };
}
