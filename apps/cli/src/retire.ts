import os from "node:os";
import { signRetirement, verifyRetirement } from "@citadel/artifacts";
import { AuditWriter } from "@citadel/audit";
import { CitadelError, coerceError, type TrustedSigner } from "@citadel/contracts";
import { createLogger } from "@citadel/telemetry";
import { ownAuditKey } from "./audit-keys.js";
import type { CliContext } from "./context.js";

/**
 * Refuses to route (or publish) a version that a pinned signer retired. A retirement
 * that does not verify is ignored with a warning: a Redis writer cannot block routing.
 */
export async function assertNotRetired(ctx: CliContext, name: string, versions: readonly string[]): Promise<void> {
  let trusted: TrustedSigner[] | undefined;
  for (const version of versions) {
    const raw = await ctx.registry.getRetirement(name, version);
    if (raw === null) continue;
    trusted ??= await ctx.trusted();
    const retirement = verifiedOrNull(ctx, trusted, raw, name, version);
    if (retirement) {
      const why = retirement.reason ? ` (${retirement.reason})` : "";
      throw new CitadelError(
        "MODEL_RETIRED",
        `${name}@${version} is retired${why}; a retired version is never routed or published again`,
      );
    }
  }
}

function verifiedOrNull(ctx: CliContext, trusted: TrustedSigner[], raw: unknown, name: string, version: string) {
  try {
    return verifyRetirement(raw, trusted, { name, version });
  } catch (err) {
    const e = coerceError(err);
    ctx.warn(
      `ignoring a retirement of ${name}@${version} that does not verify (${e instanceof CitadelError ? e.code : e.message})`,
    );
    return null;
  }
}

/**
 * Retires a version: a statement signed by the manifest signer, stored with the
 * version taken out of routing, and an audit record. The stable version cannot be
 * retired (another one must be made stable first), so a model always keeps one.
 */
export async function retireVersion(
  ctx: CliContext,
  name: string,
  version: string,
  reason: string | undefined,
): Promise<"retired" | "already retired"> {
  if (!(await ctx.registry.versions(name)).includes(version))
    throw new CitadelError("MODEL_NOT_FOUND", `${name}@${version} is not published`);
  const trusted = await ctx.trusted();
  const existing = await ctx.registry.getRetirement(name, version);
  if (existing !== null && verifiedOrNull(ctx, trusted, existing, name, version)) return "already retired";
  const routing = await ctx.registry.getRouting(name);
  if (routing?.stable === version) {
    throw new CitadelError(
      "VERSION_IS_STABLE",
      `${name}@${version} is the stable version; make another version stable first (\`citadel route ${name} --stable <version>\`)`,
    );
  }
  const signed = await signRetirement(
    {
      schema: "citadel.retirement/v1",
      name,
      version,
      retiredAt: new Date().toISOString(),
      ...(reason ? { reason } : {}),
    },
    await ctx.keys(),
  );
  // A retirement the fleet would ignore (its signer not pinned) is not worth storing.
  verifyRetirement(signed, trusted, { name, version });
  const audit = auditWriter(ctx);
  const next = routing?.canary === version ? { stable: routing.stable, canaryWeight: 0 } : null;
  await ctx.registry.retire(signed, next);
  audit.record("model.retired", { model: name, version, outcome: "retired", ...(reason ? { detail: reason } : {}) });
  await audit.close(10_000);
  if (audit.backlog > 0)
    throw new Error(`${name}@${version} is retired, but its audit record reached only the log, not the stream`);
  return "retired";
}

/** An audit writer for this CLI run; its log copy goes to stderr. */
function auditWriter(ctx: CliContext): AuditWriter {
  const log = createLogger({ name: "citadel-cli", level: "info", destination: process.stderr });
  return new AuditWriter(
    ctx.redis,
    ctx.env.CITADEL_PREFIX,
    `cli:${os.hostname()}:${process.pid}`,
    log,
    ownAuditKey(ctx.env),
  );
}
