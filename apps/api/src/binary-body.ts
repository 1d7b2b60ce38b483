import {
  BINARY_CONTENT_TYPE,
  BinaryBulkHeader,
  BinaryJobHeader,
  CitadelError,
  INFERENCE_HEADER_LENGTH,
  type JobView,
  V2InferRequest,
} from "@citadel/contracts";
import type { SubmitRequest } from "@citadel/submit";
import {
  binaryDescriptor,
  encodeBinaryBody,
  type NamedRawTensor,
  type RawTensor,
  sliceBinaryTensors,
  splitBinaryBody,
} from "@citadel/tensors";
import type { FastifyReply } from "fastify";
import { z } from "zod";
import { parseJsonBody } from "./json-body.js";
import { componentRef } from "./route-docs.js";

/** A binary submit decoded: one request per job (inputs are views of the body) and whether results go back binary. */
export interface BinarySubmit {
  jobs: SubmitRequest[];
  binaryOutput: boolean;
}

/**
 * Decodes a binary POST /v1/jobs (bulk: false) or /v1/jobs/bulk body. Every framing
 * fault refuses the whole body (400): a header length past the body, a header that is
 * not strict JSON or does not match its schema, an input without binary_data_size, or
 * sizes that do not add up to the bytes after the header.
 */
export function decodeBinarySubmit(
  headerLength: string | string[] | undefined,
  body: Buffer,
  opts: { bulk: boolean; maxJsonDepth: number; bulkMaxJobs: number },
): BinarySubmit {
  const { header, data } = splitBinaryBody(headerLength, body);
  const doc = parseJsonBody(Buffer.from(header.buffer, header.byteOffset, header.byteLength), opts.maxJsonDepth);
  const rawJobs = opts.bulk ? (isObject(doc) && Array.isArray(doc.jobs) ? doc.jobs : []) : [doc];
  if (rawJobs.length > opts.bulkMaxJobs) {
    throw new CitadelError("VALIDATION_FAILED", `at most ${opts.bulkMaxJobs} jobs per bulk request`);
  }
  requireSizes(rawJobs);
  const headers: z.infer<typeof BinaryJobHeader>[] = opts.bulk
    ? parseHeader(BinaryBulkHeader, doc).jobs
    : [parseHeader(BinaryJobHeader, doc)];
  const tensors = sliceBinaryTensors(
    headers.flatMap((h) => h.inputs),
    data,
  );
  let k = 0;
  const jobs = headers.map((h) => {
    const inputs: Record<string, RawTensor> = {};
    for (const t of tensors.slice(k, k + h.inputs.length)) {
      if (Object.hasOwn(inputs, t.name)) {
        throw new CitadelError("VALIDATION_FAILED", `input '${t.name}' is listed twice`, { input: t.name });
      }
      inputs[t.name] = { dtype: t.dtype, shape: t.shape, bytes: t.bytes };
    }
    k += h.inputs.length;
    const req: SubmitRequest = {
      model: h.model,
      inputs,
      priority: h.priority,
      ...(h.version !== undefined ? { version: h.version } : {}),
      ...(h.timeoutMs !== undefined ? { timeoutMs: h.timeoutMs } : {}),
      ...(h.outputs ? { outputs: h.outputs.map((o) => o.name) } : {}),
      ...(h.custom_id !== undefined ? { custom_id: h.custom_id } : {}),
      ...(h.metadata !== undefined ? { metadata: h.metadata } : {}),
    };
    return req;
  });
  return { jobs, binaryOutput: headers.some((h) => h.parameters?.binary_data_output === true) };
}

/**
 * Cuts a binary POST /v2/.../infer body: its header as an infer request (parsed as
 * strictly as a JSON body, then the protocol's schema) and the bytes after it, which
 * v2Inputs slices by the inputs' binary_data_size.
 */
export function decodeBinaryInfer(
  headerLength: string | string[] | undefined,
  body: Buffer,
  maxJsonDepth: number,
): { request: V2InferRequest; data: Uint8Array } {
  const { header, data } = splitBinaryBody(headerLength, body);
  const doc = parseJsonBody(Buffer.from(header.buffer, header.byteOffset, header.byteLength), maxJsonDepth);
  return { request: parseHeader(V2InferRequest, doc), data };
}

/**
 * A /v2 infer body without Inference-Header-Content-Length: the whole body is the JSON
 * request, whatever its Content-Type says (as Triton reads it), checked as the route's
 * schema checks an application/json one.
 */
export function decodeJsonInfer(body: Buffer, maxJsonDepth: number): V2InferRequest {
  return parseHeader(V2InferRequest, parseJsonBody(body, maxJsonDepth), "body");
}

/** Every input must name its size; checked before the schema runs, so a missing size is its own fault. */
function requireSizes(jobs: readonly unknown[]): void {
  jobs.forEach((job, j) => {
    if (!isObject(job) || !Array.isArray(job.inputs)) return;
    job.inputs.forEach((input: unknown, i: number) => {
      const params = isObject(input) ? input.parameters : undefined;
      if (!isObject(params) || params.binary_data_size === undefined) {
        const name = isObject(input) && typeof input.name === "string" ? input.name.slice(0, 64) : `#${i}`;
        throw new CitadelError(
          "BINARY_DATA_SIZE_MISSING",
          `input '${name}'${jobs.length > 1 ? ` of job ${j}` : ""} has no parameters.binary_data_size`,
          { input: name, ...(jobs.length > 1 ? { job: j } : {}) },
        );
      }
    });
  });
}

function parseHeader<S extends z.ZodType>(schema: S, doc: unknown, what = "binary header"): z.infer<S> {
  const r = schema.safeParse(doc);
  if (!r.success) {
    const issue = r.error.issues[0];
    const where = issue?.path.length ? ` ${issue.path.join(".")}` : "";
    throw new CitadelError("VALIDATION_FAILED", `${what}${where}: ${issue?.message ?? "does not match the schema"}`, {
      issues: r.error.issues.slice(0, 10).map((i) => ({ path: i.path.join("."), message: i.message })),
    });
  }
  return r.data;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Whether a client asked for binary results: the request's binary_data_output, or an
 * Accept header that prefers application/octet-stream to JSON.
 */
export function wantsBinary(accept: string | undefined, binaryOutput = false): boolean {
  if (binaryOutput) return true;
  if (!accept) return false;
  let best: { binary: boolean; q: number } | undefined;
  for (const part of accept.split(",")) {
    const [type, ...params] = part.trim().toLowerCase().split(";");
    const binary = type === BINARY_CONTENT_TYPE;
    if (!binary && type !== "application/json" && type !== "application/*" && type !== "*/*") continue;
    const qp = params.map((p) => p.trim()).find((p) => p.startsWith("q="));
    const q = qp ? Number(qp.slice(2)) : 1;
    if (!(q > 0)) continue;
    // The first of equal weights wins; JSON stands for every range that is not octet-stream.
    if (!best || q > best.q) best = { binary, q };
  }
  return best?.binary ?? false;
}

/** Sends a completed job's view as a binary body: its outputs' descriptors in the header, their bytes after it. */
export function sendBinaryView(reply: FastifyReply, view: JobView, status = 200): FastifyReply {
  const result = view.result;
  if (view.status !== "completed" || !result) return reply.code(status).send(view);
  const tensors: NamedRawTensor[] = Object.entries(result.outputs).map(([name, t]) => ({
    name,
    dtype: t.dtype,
    shape: t.shape,
    bytes: Buffer.from(t.data, "base64"),
  }));
  const { body, headerLength } = encodeBinaryBody(
    { ...view, result: { ...result, outputs: tensors.map(binaryDescriptor) } },
    tensors,
  );
  return reply
    .code(status)
    .header("content-type", BINARY_CONTENT_TYPE)
    .header(INFERENCE_HEADER_LENGTH, headerLength)
    .send(body);
}

/**
 * The OpenAPI description of a binary body (validation accepts the buffer as it is; the
 * handler decodes it): a string of bytes, its JSON header's schema named by reference
 * (`x-inference-header`: OpenAPI 3.0 cannot describe the framing itself).
 */
export function binaryBodyDoc(header: z.ZodType, io: "input" | "output", what = "the JSON header"): z.ZodType {
  return z.any().meta({
    type: "string",
    format: "binary",
    description:
      `KServe v2 binary tensor data: Inference-Header-Content-Length bytes of UTF-8 JSON (${what}), ` +
      "then each tensor's raw little-endian bytes in the order the header lists them, parameters.binary_data_size each.",
    "x-inference-header": componentRef(header, io),
  });
}

/** The OpenAPI description of the header that frames a binary body. */
export const binaryHeaders = z.object({
  [INFERENCE_HEADER_LENGTH]: z
    .string()
    .optional()
    .describe("Byte length of the JSON header that starts a binary (application/octet-stream) body"),
});
