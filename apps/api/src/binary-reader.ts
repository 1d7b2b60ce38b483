import { INFERENCE_HEADER_LENGTH } from "@citadel/contracts";
import { releasableBuffer } from "@citadel/tensors";
import { errorCodes, type FastifyRequest } from "fastify";
import type { DecodedBody } from "./content-encoding.js";

/** Typed-array views of the tensor bytes need their element size's alignment; 8 covers every dtype. */
const ALIGN = 8;

/**
 * Buffers a binary tensor body as Fastify's `parseAs: "buffer"` does — the route's
 * bodyLimit checked against Content-Length before reading and against the bytes while
 * reading, a body shorter or longer than its Content-Length refused — but into one
 * buffer laid out so that the bytes after the JSON header start 8-byte aligned: the
 * header's length is known from Inference-Header-Content-Length before the first byte
 * arrives. Fastify's concatenation puts the tensors at the header's length, usually
 * misaligned, and each misaligned input was copied once more to be viewed as its dtype
 * (1.7 MB per 16-sample OCR job: a copy, and garbage the collector pays for again).
 */
export function readBinaryBody(
  req: FastifyRequest,
  payload: NodeJS.ReadableStream,
  done: (err: Error | null, body?: Buffer) => void,
): void {
  const limit = req.routeOptions.bodyLimit ?? 0;
  const declared = Number(req.headers["content-length"]);
  const known = Number.isSafeInteger(declared) && declared >= 0;
  // A body inflated on its way here (content-encoding.ts): Content-Length counts the bytes
  // sent, not the bytes read, so it sizes nothing and is held to the count of bytes sent.
  const decoded = payload as Partial<DecodedBody>;
  const encoded = decoded.receivedEncodedLength !== undefined;
  if (known && declared > limit) {
    done(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE());
    return;
  }
  const raw = req.headers[INFERENCE_HEADER_LENGTH];
  const headerLength = typeof raw === "string" && /^[0-9]{1,15}$/.test(raw) ? Number(raw) : 0;
  // A header length that is not a number, or past the body, is refused later (splitBinaryBody) with its own code.
  const pad = (ALIGN - (headerLength % ALIGN)) % ALIGN;
  // Sized from Content-Length only for an authenticated tenant (its route's auth and
  // rate limits ran before this parser): Fastify parses bodies of routes without auth
  // too (a 404 included), and a body declared large that never arrives must not reserve
  // that much for an anonymous client. Others' chunks are kept as they come.
  let into = known && !encoded && req.tenant ? alignedBuffer(pad, declared) : null;
  const chunks: Buffer[] = [];
  let received = 0;
  const finish = (err: Error | null, body?: Buffer) => {
    payload.removeListener("data", onData);
    payload.removeListener("end", onEnd);
    payload.removeListener("error", onError);
    done(err, body);
  };
  const onData = (chunk: Buffer | string) => {
    const c = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
    if (received + c.length > limit) return finish(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE());
    if (into && received + c.length > declared) return finish(new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH());
    if (into) c.copy(into, pad + received);
    else chunks.push(c);
    received += c.length;
  };
  const onEnd = () => {
    const sent = encoded ? decoded.receivedEncodedLength : received;
    if (known && sent !== declared) return finish(new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH());
    if (!into) {
      // No length up front (chunked), or no tenant: the chunks are placed once they are all here.
      into = alignedBuffer(pad, received);
      let at = pad;
      for (const c of chunks) at += c.copy(into, at);
    }
    finish(null, into.subarray(pad, pad + received));
  };
  const onError = (err: Error & { statusCode?: number }) => {
    if (!(typeof err.statusCode === "number" && err.statusCode >= 400)) err.statusCode = 400;
    finish(err);
  };
  payload.on("data", onData);
  payload.on("end", onEnd);
  payload.on("error", onError);
  payload.resume();
}

/**
 * A buffer of its own (offset 0 in its ArrayBuffer, so `pad` decides the alignment), its
 * padding zeroed; releasable: the route frees it once its job is stored (releaseBody).
 */
function alignedBuffer(pad: number, length: number): Buffer {
  const b = releasableBuffer(pad + length);
  b.fill(0, 0, pad);
  return b;
}
