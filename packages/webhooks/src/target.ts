import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { CitadelError } from "@citadel/contracts";
import { AddressSet, canonicalAddress, nonPublicReason } from "./addresses.js";

/** Where a delivery connects: the URL, and the address that was checked (connected to as is: no second lookup). */
export interface Target {
  url: URL;
  address: string;
  family: 4 | 6;
  /** Named by the operator's allowlist (plain http is allowed there). */
  allowlisted: boolean;
}

/** Resolves a host name to every address it has. */
export type Resolver = (host: string) => Promise<{ address: string; family: number }[]>;

const systemResolver: Resolver = (host) => lookup(host, { all: true, verbatim: true });

export interface TargetGuardOptions {
  /** How host names are resolved (the system's resolver by default). */
  resolve?: Resolver;
  /**
   * The ports a target that is not allowlisted may use (WEBHOOK_PORTS; 443 by default):
   * where the deployment's egress rules let deliveries out, and no way to make the fleet
   * knock on other services of public hosts.
   */
  ports?: readonly number[];
}

/**
 * The SSRF guard for callback URLs (checked when a URL is registered and again on
 * every delivery attempt). A target is refused unless every address its host resolves
 * to is on the public internet (loopback, private, link-local, CGNAT, multicast,
 * unspecified, documentation… and IPv6 forms carrying such an IPv4 address are refused),
 * or the operator's allowlist names the host or each of its addresses. https, and one of
 * the operator's ports, are required unless the target is allowlisted. The address
 * checked is the one connected to.
 */
export class TargetGuard {
  private readonly hosts = new Set<string>();
  private readonly nets = new AddressSet();
  private readonly resolve: Resolver;
  private readonly ports: ReadonlySet<number>;

  /**
   * @param allow host names (exact, any case), IP addresses and CIDR ranges an operator
   *   allows (WEBHOOK_ALLOW_HOSTS); an entry that is none of these throws.
   */
  constructor(allow: readonly string[] = [], o: TargetGuardOptions = {}) {
    this.resolve = o.resolve ?? systemResolver;
    const ports = o.ports ?? [443];
    if (ports.length === 0 || ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535))
      throw new Error(`webhook ports must be one or more of 1-65535, got '${ports.join(",")}'`);
    this.ports = new Set(ports);
    for (const raw of allow) {
      const e = raw
        .trim()
        .toLowerCase()
        .replace(/^\[(.*)\]$/, "$1");
      if (/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/.test(e) && isIP(e) === 0) {
        this.hosts.add(e);
        continue;
      }
      try {
        this.nets.add(e);
      } catch {
        throw new Error(`webhook allowlist entry '${raw}' is not a host name, IP address or CIDR range`);
      }
    }
  }

  /** The target a URL may be delivered to, or CALLBACK_URL_REFUSED saying why not. */
  async check(raw: string): Promise<Target> {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw refused("it is not a URL");
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") throw refused("only https (or allowlisted http) URLs");
    if (url.username || url.password) throw refused("a callback URL may not carry credentials");
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1").toLowerCase();
    if (!host) throw refused("it names no host");
    const named = this.hosts.has(host);
    let found: { address: string; family: number }[];
    // For a name, one answer for "does not resolve" and "resolves to a private address":
    // the refusal must not tell a tenant which internal names exist.
    const hidden = refused(`its host '${host}' does not resolve to public internet addresses only`);
    const literal = isIP(host) !== 0;
    if (literal) found = [{ address: host, family: isIP(host) }];
    else {
      try {
        found = await this.resolve(host);
      } catch {
        throw hidden;
      }
    }
    if (found.length === 0) throw hidden;
    let allowlisted = named;
    for (const f of found) {
      const a = canonicalAddress(f.address);
      const inAllowlist = this.nets.has(a);
      allowlisted ||= inAllowlist;
      if (named || inAllowlist) continue;
      const why = nonPublicReason(a);
      if (why) throw literal ? refused(`${a} is a ${why} address`) : hidden;
    }
    // Every address must be allowlisted for http: one public address among them must not open plain http to it.
    if (!named && allowlisted) allowlisted = found.every((f) => this.nets.has(canonicalAddress(f.address)));
    if (url.protocol === "http:" && !allowlisted) throw refused("https is required");
    const port = url.port === "" ? (url.protocol === "https:" ? 443 : 80) : Number(url.port);
    if (!allowlisted && !this.ports.has(port))
      throw refused(`port ${port} is not one webhooks are sent to here (${[...this.ports].join(", ")})`);
    const first = found[0] as { address: string; family: number };
    const address = canonicalAddress(first.address);
    return { url, address, family: isIP(address) === 6 ? 6 : 4, allowlisted };
  }
}

function refused(why: string): CitadelError {
  return new CitadelError("CALLBACK_URL_REFUSED", `callback URL refused: ${why}`);
}
