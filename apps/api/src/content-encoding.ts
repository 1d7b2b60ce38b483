import { type Readable, Transform } from "node:stream";
import { createGunzip, createInflate } from "node:zlib";
import { CitadelError } from "@citadel/contracts";

/**
 * The codings a request body may be sent in: those tritonclient's
 * `request_compression_algorithm` sends (gzip, and deflate in the zlib format that HTTP's
 * "deflate" names), as Triton decodes them.
 */
const DECODERS = { gzip: createGunzip, "x-gzip": createGunzip, deflate: createInflate } as const;
type Coding = keyof typeof DECODERS;

export const DECODED_CODINGS = "gzip, deflate";

/** A decoded body as Fastify's body readers want it: the bytes received on the wire, for the Content-Length check. */
export type DecodedBody = Readable & { receivedEncodedLength: number };

/** The request's Content-Encoding, lower-cased; undefined when absent or identity. */
export function contentCoding(header: string | undefined): string | undefined {
  const coding = header?.trim().toLowerCase();
  return coding && coding !== "identity" ? coding : undefined;
}

/** Whether a request in `coding` can be decoded. */
export function decodable(coding: string): coding is Coding {
  return Object.hasOwn(DECODERS, coding);
}

/**
 * The body inflated as it arrives, at most `limit` bytes of it: the route's body limit
 * holds for the bytes decoded, so a small body that inflates past it (a decompression
 * bomb) is refused (413) once the limit is passed, never buffered whole. Bytes that do
 * not decode are 400 BODY_ENCODING_INVALID. `receivedEncodedLength` counts the bytes
 * sent, which Fastify's readers (and readBinaryBody) hold to Content-Length.
 */
export function decodeBody(payload: Readable, coding: Coding, limit: number): DecodedBody {
  const inflate = DECODERS[coding]();
  let inflated = 0;
  const body = new Transform({
    transform(chunk: Buffer, _encoding, next) {
      inflated += chunk.length;
      if (inflated > limit)
        next(new CitadelError("PAYLOAD_TOO_LARGE", `the request body inflates past ${limit} bytes`, { limit }));
      else next(null, chunk);
    },
  }) as Transform & DecodedBody;
  body.receivedEncodedLength = 0;
  const count = (c: Buffer) => {
    body.receivedEncodedLength += c.length;
  };
  // Refused: nothing more is inflated or counted (the server discards or closes the rest).
  const stop = (err?: Error) => {
    payload.off("data", count);
    payload.unpipe(inflate);
    inflate.destroy();
    if (err && !body.destroyed) body.destroy(err);
  };
  payload.on("data", count);
  payload.on("error", stop);
  inflate.on("error", (err) =>
    stop(new CitadelError("BODY_ENCODING_INVALID", `the body is not valid ${coding} data: ${err.message}`)),
  );
  body.on("error", () => stop());
  payload.pipe(inflate).pipe(body);
  return body;
}
