import { z } from "zod";

/**
 * Where a completion notification goes: an absolute http(s) URL without credentials.
 * The schema checks the form only; whether the target may be called (its address, the
 * scheme for it) is the API's target guard's decision, at registration and at delivery.
 */
export const CallbackUrl = z
  .url({ protocol: /^https?$/, normalize: true })
  .max(2048)
  .refine(
    (u) => {
      const p = new URL(u);
      return p.username === "" && p.password === "";
    },
    { message: "a callback URL may not carry credentials (user:password@)" },
  );
export type CallbackUrl = z.infer<typeof CallbackUrl>;
