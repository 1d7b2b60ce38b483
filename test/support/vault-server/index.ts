import { type KeyObject, sign } from "node:crypto";

export { Acl, type Capability, DEFAULT_POLICY_HCL, PolicyParseError, type PolicyRule, parsePolicy } from "./policy.js";
export { MODEL_KEY, type PinnedSigner, prepareProductionKeys } from "./production-keys.js";
export {
  type CreateTokenOptions,
  type DownMode,
  loadPolicyDir,
  type RequestRecord,
  startVaultTestServer,
  type VaultTestServer,
  type VaultTestServerOptions,
} from "./server.js";

/** The repo's `infra/vault/policies` folder (the policies the test server enforces). */
export const POLICY_DIR = new URL("../../../infra/vault/policies/", import.meta.url).pathname;

export interface ServiceAccountJwtOptions {
  namespace: string;
  name: string;
  uid?: string;
  /** Seconds from now; default one hour. */
  expiresIn?: number;
  audience?: string;
  /** Signs with RS256 (RSA) or EdDSA (ed25519); unsigned (`alg: none`) when absent. */
  privateKey?: KeyObject;
}

/** A Kubernetes projected service-account token (the claims Vault's Kubernetes auth reads). */
export function makeServiceAccountJwt(options: ServiceAccountJwtOptions): string {
  const now = Math.floor(Date.now() / 1000);
  const key = options.privateKey;
  const alg = !key ? "none" : key.asymmetricKeyType === "ed25519" ? "EdDSA" : "RS256";
  const header = { alg, typ: "JWT" };
  const claims = {
    iss: "https://kubernetes.default.svc.cluster.local",
    sub: `system:serviceaccount:${options.namespace}:${options.name}`,
    aud: options.audience ?? "vault",
    iat: now,
    nbf: now,
    exp: now + (options.expiresIn ?? 3600),
    "kubernetes.io": {
      namespace: options.namespace,
      serviceaccount: { name: options.name, uid: options.uid ?? "00000000-0000-0000-0000-000000000001" },
    },
  };
  const encode = (v: object): string => Buffer.from(JSON.stringify(v)).toString("base64url");
  const signingInput = `${encode(header)}.${encode(claims)}`;
  if (!key) return `${signingInput}.`;
  const signature = sign(alg === "EdDSA" ? null : "sha256", Buffer.from(signingInput), key);
  return `${signingInput}.${signature.toString("base64url")}`;
}
