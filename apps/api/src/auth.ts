import { CitadelError } from "@citadel/contracts";
import type { DenialAggregator, RateLimiter } from "@citadel/submit";
import type { Tenant, TenantStore } from "@citadel/tenants";
import type { FastifyRequest } from "fastify";
import type { ApiMetrics } from "./metrics.js";

declare module "fastify" {
  interface FastifyRequest {
    tenant?: Tenant;
    /** Set once this request's refusal has been audited and counted. */
    audited?: boolean;
  }
}

export interface AuthDeps {
  tenants: TenantStore;
  limiter: RateLimiter;
  denials: DenialAggregator;
  metrics: ApiMetrics;
  ipRate: number;
  ipBurst: number;
}

/**
 * The onRequest hook of every authenticated route (/v1 and /v2 alike): sets req.tenant
 * or throws UNAUTHORIZED / RATE_LIMITED, each noted once as a denial.
 *
 * The key is checked first (cached in-process); then one Redis call charges the
 * per-IP bucket and, for a known tenant, the tenant's bucket together. Unknown keys
 * still pay the per-IP bucket, which is what slows key guessing.
 */
export function tenantAuth(d: AuthDeps): (req: FastifyRequest) => Promise<void> {
  return async (req) => {
    const ip = req.ip;
    const auth = req.headers.authorization;
    const key = auth?.startsWith("Bearer ") ? auth.slice(7).trim() : "";
    const tenant = key ? await d.tenants.authenticate(key) : null;
    const byIp = { scope: "ip", id: ip, rate: d.ipRate, burst: d.ipBurst };
    const limit = await d.limiter.takeAll(
      tenant
        ? [byIp, { scope: "tenant", id: tenant.id, rate: tenant.requestRate, burst: tenant.requestBurst }]
        : [byIp],
    );
    if (!limit.allowed) {
      const perIp = limit.scope === "ip";
      d.metrics.rejections.inc({ tenant: perIp ? "" : (tenant?.id ?? ""), model: "", reason: "RATE_LIMITED" });
      d.denials.note({
        event: "rate.limited",
        ...(perIp || !tenant ? {} : { tenant: tenant.id }),
        clientIp: ip,
        requestId: req.id,
        detail: perIp ? "ip" : "requests",
      });
      req.audited = true;
      throw new CitadelError(
        "RATE_LIMITED",
        perIp ? "too many requests from this address" : "request rate limit reached",
        { retryAfterMs: limit.retryAfterMs, scope: perIp ? "ip" : "tenant" },
      );
    }
    if (!tenant) {
      d.metrics.rejections.inc({ tenant: "", model: "", reason: "UNAUTHORIZED" });
      d.denials.note({
        event: "auth.denied",
        clientIp: ip,
        requestId: req.id,
        detail: key ? "unknown key" : "no key",
      });
      req.audited = true;
      throw new CitadelError("UNAUTHORIZED", "a valid API key is required (Authorization: Bearer <key>)");
    }
    req.tenant = tenant;
  };
}
