import type { z } from "zod";

/**
 * Zod's issues as one line, each with its path: `inputs.x.shape: expected array, received
 * string`. Zod's "Invalid input: " preamble is dropped (every issue is one).
 */
export function zodMessage(issues: readonly z.core.$ZodIssue[], max = 3): string {
  const parts = issues
    .slice(0, max)
    .map((i) => `${i.path.map(String).join(".") || "(top level)"}: ${i.message.replace(/^Invalid input: /, "")}`);
  if (issues.length > max) parts.push(`and ${issues.length - max} more`);
  return parts.join("; ");
}
