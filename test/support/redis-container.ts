/**
 * Redis in a container via testcontainers 11 (12.x needs Node 22). Without a Docker
 * engine it fails in milliseconds ("Could not find a working container runtime
 * strategy"); we say so and let the caller fall back.
 */
export async function startRedisContainer(): Promise<{
  url: string;
  source: string;
  stop: () => Promise<void>;
} | null> {
  try {
    const { GenericContainer, Wait } = await import("testcontainers");
    const c = await new GenericContainer("redis:7.4.1-alpine")
      .withExposedPorts(6379)
      .withWaitStrategy(Wait.forLogMessage("Ready to accept connections"))
      .start();
    return {
      url: `redis://${c.getHost()}:${c.getMappedPort(6379)}`,
      source: "testcontainers",
      stop: async () => {
        await c.stop();
      },
    };
  } catch (err) {
    process.stderr.write(`testcontainers unavailable (${(err as Error).message.split("\n")[0]}); no Redis container\n`);
    return null;
  }
}
