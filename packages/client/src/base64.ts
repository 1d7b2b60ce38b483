/**
 * Standard padded base64 with the web platform's btoa/atob (Node >= 16 and browsers),
 * for the JSON form of tensors. Chunked: String.fromCharCode takes a bounded argument list.
 */
const CHUNK = 0x8000;

export function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += CHUNK) s += String.fromCharCode(...bytes.subarray(i, i + CHUNK));
  return btoa(s);
}

export function fromBase64(text: string): Uint8Array {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
