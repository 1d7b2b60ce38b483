import { defaultServerConditions } from "vite";
import { defineConfig } from "vitest/config";

// Workspace packages export "@citadel/source" → src/*.ts and default → dist/*.js: tests
// run the sources (no build needed). Inline projects do not inherit the root's resolve
// options, so each one gets them.
const SOURCE_CONDITIONS = ["@citadel/source", ...defaultServerConditions];
const sources = {
  resolve: { conditions: SOURCE_CONDITIONS },
  ssr: { resolve: { conditions: SOURCE_CONDITIONS } },
};

// Unit tests live next to the source; cross-app tests under test/ share one Redis
// (started once in globalSetup) and isolate themselves by queue/key prefix.
export default defineConfig({
  test: {
    projects: [
      {
        ...sources,
        test: {
          name: "unit",
          include: ["packages/*/src/**/*.test.ts", "apps/*/src/**/*.test.ts"],
          globalSetup: ["test/support/global-setup.ts"],
          testTimeout: 30_000,
          pool: "forks",
        },
      },
      {
        ...sources,
        test: {
          name: "e2e",
          include: ["test/**/*.test.ts"],
          exclude: ["**/node_modules/**"],
          globalSetup: ["test/support/global-setup.ts"],
          testTimeout: 120_000,
          hookTimeout: 120_000,
          pool: "forks",
        },
      },
    ],
  },
});
