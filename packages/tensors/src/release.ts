/**
 * Large byte buffers whose holder frees them the moment it is done with them: a request's
 * body once its job is stored (the API), a job's inputs once its batch is over (the worker).
 *
 * Why by hand: V8 counts every ArrayBuffer's bytes as external memory and starts a
 * mark-compact of the whole heap each time 64 MB more is held than after the last one.
 * A buffer that lives past two young collections (a body while its job is validated and
 * stored, a job's inputs while its batch waits and runs) is freed only by that
 * mark-compact, so at 1.7 MB per 16-sample PaddleOCR job the API and the worker each
 * marked their whole heap about twice a second (`--trace-gc`: "external memory
 * pressure"), a sixth of the API's CPU per job.
 * Detaching the buffer moves its memory into a clone nothing holds, which the next young
 * collection frees, and takes its bytes off the count at once.
 *
 * Only buffers made here can be released, so a release can never detach memory someone
 * else shares (Node's pool, a Redis reply's pool, a socket's chunk).
 */
const releasable = new WeakSet<ArrayBuffer>();

/** A buffer of `length` bytes of its own (offset 0 in its ArrayBuffer, not zero-filled) that `release` may free. */
export function releasableBuffer(length: number): Buffer {
  const b = Buffer.allocUnsafeSlow(length);
  releasable.add(b.buffer as ArrayBuffer);
  return b;
}

/** A copy of `bytes` in a buffer of its own that `release` may free (out of a pool shared with other replies, for one). */
export function releasableCopy(bytes: Uint8Array): Buffer {
  const b = releasableBuffer(bytes.byteLength);
  b.set(bytes);
  return b;
}

/**
 * Frees the buffer `bytes` lie in, if it was made here; anything else is left to the
 * collector. Every view of it reads as empty afterwards. Call it only when nothing will
 * read the bytes again and no socket write of them is still in flight (a Redis command
 * that has not answered yet may still be writing them, or write them again after a
 * reconnect): release after the answer, never after an error.
 */
export function release(bytes: ArrayBufferView | null | undefined): void {
  const ab = bytes?.buffer;
  if (!(ab instanceof ArrayBuffer) || !releasable.delete(ab) || ab.byteLength === 0) return;
  structuredClone(ab, { transfer: [ab] });
}
