import { describe, expect, it } from "vitest";
import { embeddedIPv4, nonPublicReason } from "./addresses.js";
import { type Resolver, TargetGuard } from "./target.js";

/** A resolver answering from a table (a name missing from it does not resolve). */
const table =
  (t: Record<string, string[]>): Resolver =>
  async (host) => {
    const found = t[host];
    if (!found) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: "ENOTFOUND" });
    return found.map((address) => ({ address, family: address.includes(":") ? 6 : 4 }));
  };

const PUBLIC = "93.184.215.14";

async function codeOf(guard: TargetGuard, url: string): Promise<string> {
  try {
    await guard.check(url);
    return "allowed";
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

describe("the callback target guard", () => {
  const resolve = table({
    "hooks.example.com": [PUBLIC, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    localhost: ["127.0.0.1", "::1"],
    "internal.example.com": ["10.1.2.3"],
    "mixed.example.com": [PUBLIC, "192.168.1.10"],
    "metadata.example.com": ["169.254.169.254"],
  });
  const guard = new TargetGuard([], { resolve, ports: [443, 8443] });

  it("allows https to a host whose every address is public, and pins the address it checked", async () => {
    const t = await guard.check("https://hooks.example.com/citadel?x=1");
    expect(t).toMatchObject({ address: PUBLIC, family: 4, allowlisted: false });
    expect(t.url.hostname).toBe("hooks.example.com");
    expect(await codeOf(guard, `https://${PUBLIC}:8443/`)).toBe("allowed");
  });

  it.each([
    "https://127.0.0.1/",
    "https://127.1.2.3/",
    "https://0x7f000001/",
    "https://2130706433/",
    "https://0.0.0.0/",
    "https://10.0.0.1/",
    "https://172.16.5.4/",
    "https://192.168.0.1/",
    "https://100.64.0.1/",
    "https://169.254.169.254/latest/meta-data/",
    "https://224.0.0.1/",
    "https://255.255.255.255/",
    "https://[::1]/",
    "https://[::]/",
    "https://[fe80::1]/",
    "https://[fd00::1]/",
    "https://[ff02::1]/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:7f00:1]/",
    "https://[::ffff:169.254.169.254]/",
    "https://[::127.0.0.1]/",
    "https://[64:ff9b::10.0.0.1]/",
    "https://[2002:c0a8:0101::1]/",
    "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    "https://localhost/",
    "https://internal.example.com/",
    "https://mixed.example.com/",
    "https://metadata.example.com/",
    "https://nowhere.example.com/",
  ])("refuses %s", async (url) => {
    expect(await codeOf(guard, url)).toBe("CALLBACK_URL_REFUSED");
  });

  it("says which range a literal address is in, but not what a name resolves to (no internal DNS oracle)", async () => {
    await expect(guard.check("https://169.254.169.254/")).rejects.toThrow(/169\.254\.169\.254 is a link-local/);
    const messageOf = (url: string) =>
      guard.check(url).then(
        () => "allowed",
        (e: Error) => e.message,
      );
    const internal = await messageOf("https://internal.example.com/");
    const missing = await messageOf("https://nowhere.example.com/");
    expect(internal).not.toContain("10.1.2.3");
    expect(internal.replace("internal", "X")).toBe(missing.replace("nowhere", "X"));
  });

  it("sends to the ports the operator opened only (443 unless WEBHOOK_PORTS says more), but any for an allowlisted host", async () => {
    const only443 = new TargetGuard(["10.20.0.0/16"], { resolve });
    expect(await codeOf(only443, "https://hooks.example.com/")).toBe("allowed");
    expect(await codeOf(only443, "https://hooks.example.com:443/")).toBe("allowed");
    await expect(only443.check("https://hooks.example.com:8443/")).rejects.toThrow(/port 8443/);
    expect(await codeOf(only443, `https://${PUBLIC}:6379/`)).toBe("CALLBACK_URL_REFUSED");
    expect(await codeOf(guard, "https://hooks.example.com:8443/")).toBe("allowed");
    expect(await codeOf(guard, "https://hooks.example.com:9443/")).toBe("CALLBACK_URL_REFUSED");
    expect(await codeOf(only443, "http://10.20.1.1:9999/")).toBe("allowed");
  });

  it("refuses a port list that names no port", () => {
    expect(() => new TargetGuard([], { ports: [] })).toThrow(/port/);
    expect(() => new TargetGuard([], { ports: [0] })).toThrow(/port/);
    expect(() => new TargetGuard([], { ports: [65536] })).toThrow(/port/);
  });

  it("refuses plain http, credentials and other schemes", async () => {
    expect(await codeOf(guard, "http://hooks.example.com/")).toBe("CALLBACK_URL_REFUSED");
    expect(await codeOf(guard, "https://user:pw@hooks.example.com/")).toBe("CALLBACK_URL_REFUSED");
    expect(await codeOf(guard, "ftp://hooks.example.com/")).toBe("CALLBACK_URL_REFUSED");
    expect(await codeOf(guard, "not a url")).toBe("CALLBACK_URL_REFUSED");
  });

  it("checks again on every call: a name that now resolves to a private address is refused (rebinding)", async () => {
    const answers = [[PUBLIC], ["127.0.0.1"]];
    const flipping = new TargetGuard([], {
      resolve: async () => (answers.shift() ?? []).map((address) => ({ address, family: 4 })),
    });
    expect(await codeOf(flipping, "https://rebind.example.com/")).toBe("allowed");
    expect(await codeOf(flipping, "https://rebind.example.com/")).toBe("CALLBACK_URL_REFUSED");
  });

  it("lets an operator's allowlist name hosts, addresses and ranges, and allows http only to them", async () => {
    const allowing = new TargetGuard(["127.0.0.1", "10.20.0.0/16", "Receiver.Internal", "[fd00::5]"], {
      resolve: table({
        "receiver.internal": ["10.99.0.1"],
        "lan.example.com": ["10.20.3.4"],
        "half.example.com": [PUBLIC, "10.20.3.4"],
      }),
    });
    expect(await allowing.check("http://127.0.0.1:9999/hook")).toMatchObject({
      address: "127.0.0.1",
      allowlisted: true,
    });
    expect(await codeOf(allowing, "http://[::ffff:127.0.0.1]:9999/")).toBe("allowed");
    expect(await codeOf(allowing, "http://receiver.internal/")).toBe("allowed");
    expect(await codeOf(allowing, "http://lan.example.com/")).toBe("allowed");
    expect(await codeOf(allowing, "https://[fd00::5]/")).toBe("allowed");
    // Named ranges only: the rest of loopback and private space stays refused.
    expect(await codeOf(allowing, "http://127.0.0.2/")).toBe("CALLBACK_URL_REFUSED");
    expect(await codeOf(allowing, "https://10.21.0.1/")).toBe("CALLBACK_URL_REFUSED");
    expect(await codeOf(allowing, "https://[::1]/")).toBe("CALLBACK_URL_REFUSED");
    // One public address beside an allowlisted one: https only.
    expect(await codeOf(allowing, "https://half.example.com/")).toBe("allowed");
    expect(await codeOf(allowing, "http://half.example.com/")).toBe("CALLBACK_URL_REFUSED");
  });

  it("refuses an allowlist entry that is neither a host name, an address nor a range", () => {
    expect(() => new TargetGuard(["https://x/"])).toThrow(/allowlist entry/);
    expect(() => new TargetGuard(["10.0.0.0/40"])).toThrow(/allowlist entry/);
  });
});

describe("addresses", () => {
  it("finds the IPv4 address inside mapped, compatible, NAT64 and 6to4 IPv6 addresses", () => {
    expect(embeddedIPv4("::ffff:7f00:1")).toBe("127.0.0.1");
    expect(embeddedIPv4("::ffff:10.0.0.1")).toBe("10.0.0.1");
    expect(embeddedIPv4("::a9fe:a9fe")).toBe("169.254.169.254");
    expect(embeddedIPv4("64:ff9b::c0a8:1")).toBe("192.168.0.1");
    expect(embeddedIPv4("2002:0a00:0001::")).toBe("10.0.0.1");
    expect(embeddedIPv4("::1")).toBeUndefined();
    expect(embeddedIPv4("2606:2800:21f:cb07:6820:80da:af6b:8b2c")).toBeUndefined();
  });

  it("names why an address is not public, and passes public ones", () => {
    expect(nonPublicReason("8.8.8.8")).toBeUndefined();
    expect(nonPublicReason("2a00:1450:4001:80b::200e")).toBeUndefined();
    expect(nonPublicReason("100.127.255.255")).toMatch(/CGNAT/);
    expect(nonPublicReason("::ffff:192.168.1.1")).toMatch(/private/);
    expect(nonPublicReason("fc12::1")).toMatch(/unique local/);
  });
});
