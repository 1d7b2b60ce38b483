/**
 * `Promise.race(waits)` that also ends when `signal` aborts.
 *
 * Why not race a promise that settles on stop: a race leaves a reaction on every promise
 * it is given, holding the race's own promise, until that promise settles. A stop promise
 * stays pending for the process's life, so a loop that races it on every turn keeps ~300
 * bytes a turn forever (the worker's consumer did, ~1 KB a job). The abort listener here
 * is removed as soon as the race is over.
 */
export async function raceOrAbort(waits: readonly Promise<unknown>[], signal: AbortSignal): Promise<void> {
  if (signal.aborted) return;
  let onAbort = () => {};
  const aborted = new Promise<void>((resolve) => {
    onAbort = resolve;
  });
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    await Promise.race([...waits, aborted]);
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}
