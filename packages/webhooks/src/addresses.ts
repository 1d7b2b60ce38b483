import { BlockList, isIPv4, isIPv6 } from "node:net";

/**
 * Address ranges a callback may not reach unless an operator allows them: everything
 * that is not the public internet (IANA special-purpose registries, RFC 6890 and its
 * updates). Each has a name, so a refusal can say which.
 */
const SPECIAL: readonly [cidr: string, what: string][] = [
  ["0.0.0.0/8", "unspecified ('this network')"],
  ["10.0.0.0/8", "private (RFC 1918)"],
  ["100.64.0.0/10", "shared address space (CGNAT, RFC 6598)"],
  ["127.0.0.0/8", "loopback"],
  ["169.254.0.0/16", "link-local (cloud metadata lives here)"],
  ["172.16.0.0/12", "private (RFC 1918)"],
  ["192.0.0.0/24", "IETF protocol assignments"],
  ["192.0.2.0/24", "documentation"],
  ["192.88.99.0/24", "6to4 relay anycast"],
  ["192.168.0.0/16", "private (RFC 1918)"],
  ["198.18.0.0/15", "benchmarking"],
  ["198.51.100.0/24", "documentation"],
  ["203.0.113.0/24", "documentation"],
  ["224.0.0.0/4", "multicast"],
  ["240.0.0.0/4", "reserved (and broadcast)"],
  ["::/128", "unspecified"],
  ["::1/128", "loopback"],
  ["100::/64", "discard-only"],
  ["2001::/32", "Teredo (tunnels to any IPv4 address)"],
  ["2001:db8::/32", "documentation"],
  ["fc00::/7", "unique local (private)"],
  ["fe80::/10", "link-local"],
  ["fec0::/10", "site-local (deprecated, private)"],
  ["ff00::/8", "multicast"],
];

/** A set of CIDR ranges and single addresses, IPv4 and IPv6. */
export class AddressSet {
  private readonly list = new BlockList();

  add(entry: string): void {
    const [net, bits] = entry.split("/");
    const type = isIPv4(net ?? "") ? "ipv4" : isIPv6(net ?? "") ? "ipv6" : undefined;
    if (!net || !type) throw new Error(`'${entry}' is not an IP address or CIDR range`);
    if (bits === undefined) {
      this.list.addAddress(net, type);
      return;
    }
    const prefix = Number(bits);
    if (!Number.isInteger(prefix) || prefix < 0 || prefix > (type === "ipv4" ? 32 : 128))
      throw new Error(`'${entry}' has no valid prefix length`);
    this.list.addSubnet(net, prefix, type);
  }

  has(address: string): boolean {
    return this.list.check(address, isIPv4(address) ? "ipv4" : "ipv6");
  }
}

const special = SPECIAL.map(([cidr, what]) => {
  const set = new AddressSet();
  set.add(cidr);
  return { set, what };
});

/** The eight 16-bit groups of an IPv6 address (a trailing dotted quad included), or undefined. */
function groupsOf(v6: string): number[] | undefined {
  if (!isIPv6(v6)) return undefined;
  let text = v6.toLowerCase().split("%")[0] ?? "";
  const quad = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (quad) {
    const [a, b, c, d] = quad.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, quad.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split("::");
  const part = (s: string | undefined) => (s ? s.split(":").map((g) => Number.parseInt(g, 16)) : []);
  const h = part(head);
  const t = part(tail);
  return tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill(0), ...t];
}

const quadOf = (hi: number, lo: number) => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;

/**
 * The IPv4 address an IPv6 address carries and reaches, if any: IPv4-mapped
 * (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d, deprecated), NAT64 (64:ff9b::/96) and
 * 6to4 (2002::/16). A guard must judge those by the IPv4 address inside: `::ffff:127.0.0.1`
 * is loopback.
 */
export function embeddedIPv4(address: string): string | undefined {
  const g = groupsOf(address);
  if (g?.length !== 8) return undefined;
  const [g0, g1, g2, g3, g4, g5, g6, g7] = g as [number, number, number, number, number, number, number, number];
  const zeroTo4 = g0 === 0 && g1 === 0 && g2 === 0 && g3 === 0 && g4 === 0;
  if (zeroTo4 && g5 === 0xffff) return quadOf(g6, g7);
  // ::a.b.c.d, but not :: or ::1 (judged as IPv6).
  if (zeroTo4 && g5 === 0 && (g6 !== 0 || g7 > 1)) return quadOf(g6, g7);
  if (g0 === 0x64 && g1 === 0xff9b && g2 === 0 && g3 === 0 && g4 === 0 && g5 === 0) return quadOf(g6, g7);
  if (g0 === 0x2002) return quadOf(g1, g2);
  return undefined;
}

/** The address as it is judged and connected to: an IPv6 address carrying an IPv4 one becomes that. */
export function canonicalAddress(address: string): string {
  return embeddedIPv4(address) ?? address;
}

/** Why an address is not on the public internet, or undefined when it is. */
export function nonPublicReason(address: string): string | undefined {
  const a = canonicalAddress(address);
  if (!isIPv4(a) && !isIPv6(a)) return "not an IP address";
  return special.find((s) => s.set.has(a))?.what;
}
