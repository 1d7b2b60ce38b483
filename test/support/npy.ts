import { writeFileSync } from "node:fs";

/** A .npy file (format 1.0) written by hand: magic, version, header length, the padded dict, the data. */
export function writeNpy(file: string, descr: string, shape: number[], data: ArrayBufferView): void {
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  const header = `${dict}${" ".repeat(63 - ((10 + dict.length) % 64))}\n`;
  const pre = Buffer.alloc(10);
  pre.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  pre.writeUInt16LE(header.length, 8);
  const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  writeFileSync(file, Buffer.concat([pre, Buffer.from(header, "latin1"), bytes]));
}
