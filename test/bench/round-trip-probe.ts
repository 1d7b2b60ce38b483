/**
 * What one Redis round trip costs on this machine, back to back and after the
 * processes have gone idle: 300 PINGs at each gap between them (0, 1, 5 and 50 ms).
 * A job crosses processes (client, API, Redis, worker, runner thread) many times; on a
 * VM, waking an idle one costs far more than a busy one answering, and that sets the
 * latency of a lightly loaded fleet, not the work each step does.
 *
 *   node --import tsx test/bench/round-trip-probe.ts
 */
import { Redis } from "ioredis";
import { percentile, say, sleep, startOwnRedis } from "./harness.js";

const redis = await startOwnRedis();
const client = new Redis(redis.url);
try {
  for (const gap of [0, 1, 5, 50]) {
    const ms: number[] = [];
    for (let i = 0; i < 300; i++) {
      if (gap) await sleep(gap);
      const t = performance.now();
      await client.ping();
      ms.push(performance.now() - t);
    }
    ms.sort((a, b) => a - b);
    const at = (p: number) => percentile(ms, p).toFixed(3);
    say(`PING after ${String(gap).padStart(2)} ms idle: p50 ${at(50)}, p90 ${at(90)}, p99 ${at(99)} ms`);
  }
} finally {
  client.disconnect();
  await redis.close();
}
