export interface RedisHandle {
  url: string;
  source: "env" | "local" | "spawned";
  stop: () => Promise<void>;
}
export function ping(url: string, timeoutMs?: number): Promise<boolean>;
export function findRedis(): Promise<RedisHandle | null>;
export function startRedisServer(opts?: { log?: (msg: string) => void; install?: boolean }): Promise<RedisHandle>;
export function findOrStartRedis(opts?: { log?: (msg: string) => void; install?: boolean }): Promise<RedisHandle>;
