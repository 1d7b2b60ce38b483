import { CitadelError, httpStatusFor, v2ErrorBody, v2StatusFor } from "@citadel/contracts";
import { isRedisUnavailable } from "@citadel/queue";
import type { FastifyReply, FastifyRequest } from "fastify";

/** Whether a request is under /v2 (the Open Inference Protocol), whose errors have the protocol's shape. */
export function isV2(url: string): boolean {
  return /^\/v2(?:[/?]|$)/.test(url);
}

/**
 * Answers a refusal in the envelope of the request's protocol: `{"error":{code,message}}`
 * under /v1 (and everywhere else), `{"error":"CODE: message"}` under /v2. Retry-After
 * is the same for both.
 */
export function sendError(req: FastifyRequest, reply: FastifyReply, err: CitadelError): FastifyReply {
  const v2 = isV2(req.url);
  const status = v2 ? v2StatusFor(err.code) : httpStatusFor(err.code);
  const retry = err.details?.retryAfterMs;
  if (typeof retry === "number") reply.header("retry-after", Math.max(1, Math.ceil(retry / 1000)));
  // A refusal no wait can fix (a request larger than its burst) promises no retry time.
  else if ((status === 429 || status === 503) && err.details?.retryable !== false) reply.header("retry-after", 1);
  return reply.code(status).send(v2 ? v2ErrorBody(err) : err.toJSON());
}

/**
 * What a client did wrong, from an error Fastify or a plugin raised (schema, body
 * parser, load shedding, the job store), as a CitadelError; undefined for anything
 * else, which is a fault of ours (500).
 */
export function requestError(err: unknown, bodyLimit: number): CitadelError | undefined {
  if (err instanceof CitadelError) return err;
  const fe = err as {
    code?: string;
    validation?: { instancePath?: string; message?: string }[];
    statusCode?: number;
  };
  if (fe.validation) {
    const issues = fe.validation
      .slice(0, 10)
      .map((v) => ({ path: v.instancePath ?? "", message: v.message ?? "invalid" }));
    const where = issues[0] ? `${issues[0].path || "body"}: ${issues[0].message}` : "request does not match the schema";
    return new CitadelError("VALIDATION_FAILED", where, { issues });
  }
  switch (fe.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new CitadelError("PAYLOAD_TOO_LARGE", `request body exceeds ${bodyLimit} bytes`);
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return new CitadelError("UNSUPPORTED_MEDIA_TYPE", "send application/json or application/octet-stream");
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return new CitadelError("MALFORMED_JSON", "request body is empty or its length is wrong");
  }
  if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new CitadelError("VALIDATION_FAILED", "bad request");
  }
  if (isRedisUnavailable(err))
    return new CitadelError("QUEUE_UNAVAILABLE", "the job store is unavailable; retry later");
  return undefined;
}
