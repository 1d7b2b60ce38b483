import { readFile, writeFile } from "node:fs/promises";
import { createAuditAnchor, verifyAuditStream } from "@citadel/audit";
import type { JobInput } from "@citadel/client";
import type { Priority } from "@citadel/contracts";
import { CitadelError, type ModelRouting } from "@citadel/contracts";
import { initKeyring, LocalKeyProvider } from "@citadel/keys";
import { CoreDumpsEnabledError } from "@citadel/runtime";
import { TenantStore } from "@citadel/tenants";
import { Command, InvalidArgumentError, Option } from "commander";
import { ownAuditKey, verifierKeys } from "./audit-keys.js";
import type { ApiFlags } from "./commands/jobs.js";
import { type CliContext, loadCliEnv, openContext, print, reportError } from "./context.js";
import { disableCoreDumpsForCli, PLAINTEXT_VERBS } from "./harden.js";
import { checkCallbackUrl, cliWebhookKey, tenantSecrets } from "./webhook-secrets.js";

// Heavy modules (onnxruntime, the demo) load only for the verbs that need them: most
// verbs answer in well under a second.
const models = () => import("./models.js");
const retirement = () => import("./retire.js");

const program = new Command()
  .name("citadel")
  .description("Seal, sign, publish and verify models; manage tenants; submit work; check the audit chain.")
  .showHelpAfterError()
  .configureOutput({ outputError: (s, write) => write(s) })
  // A core dump of a verb that holds plaintext weights or keys would put them on disk.
  .hook("preAction", (_program, action) => {
    if (!PLAINTEXT_VERBS.has(action.name())) return;
    try {
      disableCoreDumpsForCli();
    } catch (err) {
      if (err instanceof CoreDumpsEnabledError) process.stderr.write(`citadel: ${err.code}: ${err.message}\n`);
      else reportError(err);
      process.exit(78);
    }
  });

const int = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError("expected a non-negative integer");
  return n;
};
const weight = (v: string) => {
  const n = Number(v);
  if (!(n >= 0 && n <= 1)) throw new InvalidArgumentError("expected a weight between 0 and 1");
  return n;
};

/** Runs a verb with a context (Redis, store, keys) and always closes it. */
function withContext(fn: (ctx: CliContext, ...args: never[]) => Promise<void>) {
  return async (...args: unknown[]) => {
    let ctx: CliContext | undefined;
    try {
      ctx = openContext(loadCliEnv());
      await fn(ctx, ...(args as never[]));
    } catch (err) {
      reportError(err);
    } finally {
      await ctx?.close();
    }
  };
}

const collect = (v: string, all: string[]) => [...all, v];

interface SubmitFlags {
  model?: string;
  version?: string;
  input: string[];
  output: string[];
  priority?: Priority;
  timeoutMs?: number;
  wait?: number;
  jsonl?: string;
  out?: string;
  concurrency: number;
  timeout?: number;
}

const keys = program.command("keys").description("the key service: dev keyring, rotation, signer public keys");
keys
  .command("init")
  .description("create the local dev keyring (mode 0600) if it does not exist")
  .action(() => {
    try {
      const env = loadCliEnv();
      print(initKeyring(env.LOCAL_KEYRING) ? `created ${env.LOCAL_KEYRING}` : `${env.LOCAL_KEYRING} already exists`);
    } catch (err) {
      reportError(err);
    }
  });
keys
  .command("rotate")
  .description("add a new version of the model key (Transit rotate); old versions keep decrypting")
  .option("--signing", "rotate the local signing key instead (dev keyring only)")
  .action(
    withContext(async (ctx, opts: { signing?: boolean }) => {
      const k = await ctx.keys();
      if (opts.signing) {
        if (!(k instanceof LocalKeyProvider))
          throw new Error("rotate the Vault signing key with `vault write -f transit/keys/<key>/rotate`");
        const pk = k.rotateSigningKey();
        print(`new signing key ${pk.keyId}; pin it on workers before publishing with it`);
        return;
      }
      print(
        `${ctx.env.VAULT_MODEL_KEY} is now at version ${await k.rotateKey(ctx.env.VAULT_MODEL_KEY)}; run \`citadel rewrap\``,
      );
    }),
  );
keys
  .command("show")
  .description("print the signer public keys as JSON (the TRUSTED_SIGNERS file workers pin)")
  .action(
    withContext(async (ctx) => {
      print(JSON.stringify(await (await ctx.keys()).publicKeys(), null, 2));
    }),
  );

program
  .command("seal")
  .description("seal a model: encrypt under a fresh data key and sign its manifest")
  .argument("<model>", "an .onnx model, or a raw TensorRT .engine (with --engine-io)")
  .requiredOption("--name <name>", "model name")
  .requiredOption("--version <version>", "model version")
  .option(
    "--spec <file>",
    'JSON: maxBatch, runBatch, maxQueueDelayMs, timeoutMs, executionProviders, batchAxis, inputs{range,maxDim,batchAxis,dtype:"bfloat16"}, outputPolicy, tensorrt',
  )
  .option(
    "--engine-io <file>",
    "JSON {inputs:[{name,dtype,shape}],outputs:[…]} of a raw TensorRT engine, wrapped as an EPContext model",
  )
  .option("--out <dir>", "where to write <name>-<version>.manifest.json and .sealed", "sealed")
  .action(
    withContext(
      async (
        ctx,
        file: string,
        o: { name: string; version: string; spec?: string; engineIo?: string; out: string },
      ) => {
        const bytes = new Uint8Array(await readFile(file));
        const spec = o.spec ? JSON.parse(await readFile(o.spec, "utf8")) : {};
        const engineIo = o.engineIo ? JSON.parse(await readFile(o.engineIo, "utf8")) : undefined;
        const { sealBytes, writeSealed } = await models();
        const sealed = await sealBytes(ctx, bytes, {
          name: o.name,
          version: o.version,
          spec,
          ...(engineIo ? { engineIo } : {}),
        });
        bytes.fill(0);
        const out = await writeSealed(o.out, sealed);
        print(`sealed ${o.name}@${o.version}: ${out.manifest}, ${out.artifact}`);
      },
    ),
  );

program
  .command("publish")
  .description("put a sealed model in the store and its manifest in the registry; set routing")
  .argument("<manifest>", "a .manifest.json written by `citadel seal` (its .sealed beside it)")
  .option("--stable", "make this version the stable one")
  .addOption(new Option("--canary <weight>", "route this share of traffic (0..1) to this version").argParser(weight))
  .action(
    withContext(async (ctx, file: string, o: { stable?: boolean; canary?: number }) => {
      const { readSealed, publishSealed } = await models();
      const sealed = await readSealed(file);
      const routing = await publishSealed(ctx, sealed, {
        ...(o.stable ? { stable: true } : {}),
        ...(o.canary !== undefined ? { canaryWeight: o.canary } : {}),
      });
      print(
        `published ${sealed.signed.manifest.name}@${sealed.signed.manifest.version}; routing ${JSON.stringify(routing)}`,
      );
    }),
  );

program
  .command("route")
  .description("set a model's routing: stable version and optional canary with weight")
  .argument("<model>")
  .requiredOption("--stable <version>")
  .option("--canary <version>")
  .addOption(new Option("--weight <w>", "canary share 0..1").argParser(weight).default(0))
  .action(
    withContext(async (ctx, model: string, o: { stable: string; canary?: string; weight: number }) => {
      const r: ModelRouting = { stable: o.stable, canaryWeight: o.weight, ...(o.canary ? { canary: o.canary } : {}) };
      const { assertNotRetired } = await retirement();
      await assertNotRetired(ctx, model, [o.stable, ...(o.canary ? [o.canary] : [])]);
      await ctx.registry.setRouting(model, r);
      print(`routing for ${model}: ${JSON.stringify(r)}`);
    }),
  );

program
  .command("verify")
  .description("check a published version: signature, hashes and decryptability (in memory only)")
  .argument("<model>")
  .argument("<version>")
  .action(
    withContext(async (ctx, model: string, version: string) => {
      const { verifyPublished } = await models();
      const r = await verifyPublished(ctx, model, version, await ctx.trusted());
      print(
        `ok ${model}@${version}: signature by a pinned key, ciphertext and plaintext hashes match, decrypts (${r.plaintextBytes} B, wiped)`,
      );
    }),
  );

program
  .command("models")
  .description("list published models, versions and routing")
  .action(
    withContext(async (ctx) => {
      for (const m of await ctx.registry.models()) {
        print(
          `${m}  versions ${(await ctx.registry.versions(m)).join(", ")}  routing ${JSON.stringify(await ctx.registry.getRouting(m))}`,
        );
      }
    }),
  );

program
  .command("rewrap")
  .description(
    "move every stored wrapped data key to the newest key version, re-signing manifests; artifacts untouched",
  )
  .action(
    withContext(async (ctx) => {
      const { signManifest, verifyManifest } = await import("@citadel/artifacts");
      const k = await ctx.keys();
      const trusted = await ctx.trusted();
      // Re-signing vouches for a manifest anew: every stored one must first verify
      // against the pinned signers and name its own registry slot, or nothing is written.
      const verified = [];
      for (const m of await ctx.registry.models()) {
        for (const v of await ctx.registry.versions(m)) {
          try {
            verified.push(verifyManifest(await ctx.registry.getManifest(m, v), trusted, { name: m, version: v }));
          } catch (err) {
            if (!(err instanceof CitadelError)) throw err;
            throw new CitadelError(err.code, `${m}@${v}: ${err.message}; nothing was rewrapped`, undefined, {
              cause: err,
            });
          }
        }
      }
      for (const manifest of verified) {
        const a = manifest.artifact;
        const wrappedKey = await k.rewrapDataKey(a.keyName, a.wrappedKey);
        if (wrappedKey === a.wrappedKey) continue;
        const next = await signManifest({ ...manifest, artifact: { ...a, wrappedKey } }, k);
        await ctx.registry.putRaw(manifest.name, manifest.version, JSON.stringify(next));
        print(
          `rewrapped ${manifest.name}@${manifest.version}: ${a.wrappedKey.split(":").slice(0, 2).join(":")} → ${wrappedKey.split(":").slice(0, 2).join(":")}`,
        );
      }
    }),
  );

program
  .command("retire")
  .description("retire a version for good: a signed statement, taken out of routing, never served or routed again")
  .argument("<model>")
  .argument("<version>")
  .option("--reason <text>", "why (kept in the signed statement and the audit record)")
  .action(
    withContext(async (ctx, model: string, version: string, o: { reason?: string }) => {
      const { retireVersion } = await retirement();
      const r = await retireVersion(ctx, model, version, o.reason);
      print(`${r} ${model}@${version}${o.reason ? `: ${o.reason}` : ""}`);
    }),
  );

const tenants = program.command("tenants").description("tenants and their API keys (changes apply without a restart)");
tenants
  .command("add")
  .argument("<id>")
  .option("--models <list>", "comma-separated model names, or *", "*")
  .option("--rate <n>", "requests per second", int)
  .option("--samples <n>", "samples per second", int)
  .option("--max-queued <n>", "max queued jobs", int)
  .option(
    "--allow-high-priority",
    'may submit priority "high" (ahead of every tenant\'s queued work); off unless given',
  )
  .option("--callback-url <url>", "notify this tenant's finished jobs and batches here (signed webhooks)")
  .option("--allow-request-callbacks", "may name a callback URL per job or batch; off unless given")
  .description("create or update a tenant (options not given take their defaults; its webhook secret is kept)")
  .action(
    withContext(
      async (
        ctx,
        id: string,
        o: {
          models: string;
          rate?: number;
          samples?: number;
          maxQueued?: number;
          allowHighPriority?: boolean;
          callbackUrl?: string;
          allowRequestCallbacks?: boolean;
        },
      ) => {
        // Checked as a delivery will be (the SSRF guard, with this operator's allowlist).
        if (o.callbackUrl !== undefined) await checkCallbackUrl(ctx.env, o.callbackUrl);
        const store = new TenantStore(ctx.redis, ctx.env.CITADEL_PREFIX);
        const t = await store.upsert({
          id,
          models: o.models.split(",").map((s) => s.trim()),
          ...(o.rate ? { requestRate: o.rate, requestBurst: o.rate * 2 } : {}),
          ...(o.samples ? { sampleRate: o.samples, sampleBurst: o.samples * 2 } : {}),
          ...(o.maxQueued ? { maxQueuedJobs: o.maxQueued } : {}),
          allowHighPriority: o.allowHighPriority === true,
          ...(o.callbackUrl !== undefined ? { callbackUrl: o.callbackUrl } : {}),
          allowRequestCallbacks: o.allowRequestCallbacks === true,
        });
        print(JSON.stringify(t));
      },
    ),
  );
tenants
  .command("webhook-secret")
  .argument("<id>")
  .option("--rotate", "move to a new secret; the current one keeps signing beside it for --grace-hours")
  .option("--grace-hours <n>", "with --rotate: hours both secrets sign (0: the old one stops at once)", int, 24)
  .description("print the tenant's webhook signing secret (whsec_…; derived from WEBHOOK_KEY_FILE, never stored)")
  .action(
    withContext(async (ctx, id: string, o: { rotate?: boolean; graceHours: number }) => {
      const store = new TenantStore(ctx.redis, ctx.env.CITADEL_PREFIX);
      const key = cliWebhookKey(ctx.env);
      let t = await store.get(id);
      if (!t) throw new CitadelError("VALIDATION_FAILED", `no tenant '${id}'`);
      if (o.rotate) t = await store.rotateWebhookSecret(id, o.graceHours * 3600 * 1000);
      const s = tenantSecrets(key, t);
      print(s.current);
      if (s.previous) process.stderr.write(`citadel: the previous secret also signs until ${s.until}\n`);
    }),
  );
tenants
  .command("issue-key")
  .argument("<id>")
  .description("issue an API key (printed once; only its hash is stored)")
  .action(
    withContext(async (ctx, id: string) => {
      print(await new TenantStore(ctx.redis, ctx.env.CITADEL_PREFIX).issueKey(id));
    }),
  );
tenants
  .command("revoke")
  .argument("<key-or-hash-prefix>")
  .description("revoke a key (takes effect within seconds on every API replica)")
  .action(
    withContext(async (ctx, k: string) => {
      print(`revoked ${await new TenantStore(ctx.redis, ctx.env.CITADEL_PREFIX).revokeKey(k)} key(s)`);
    }),
  );
tenants
  .command("list")
  .description("list tenants and their key hash prefixes")
  .action(
    withContext(async (ctx) => {
      const store = new TenantStore(ctx.redis, ctx.env.CITADEL_PREFIX);
      for (const t of await store.list())
        print(
          `${t.id}  models ${t.models.join(",")}${t.allowHighPriority ? "  high-priority" : ""}${t.callbackUrl ? `  callback ${new URL(t.callbackUrl).origin}` : ""}${t.allowRequestCallbacks ? "  request-callbacks" : ""}  keys ${(await store.keyHashes(t.id)).join(",")}`,
        );
    }),
  );

const audit = program.command("audit").description("the keyed, chained audit streams (one per writer)");
audit
  .command("verify")
  .description(
    "check every writer's chain (the writers hash lists them): edits, forgeries, deletions and reordering are reported (exit 2); writers whose lease ended are dropped from the hash",
  )
  .option(
    "--key-file <[role=]file>",
    "an audit key the records may be MACed with (repeatable; also AUDIT_KEY_FILES and this CLI's own key)",
    collect,
    [],
  )
  .option("--anchor <file>", "an anchor from `citadel audit anchor`: the stream must still hold or extend it")
  .action(
    withContext(async (ctx, o: { keyFile: string[]; anchor?: string }) => {
      const keys = verifierKeys(ctx.env, o.keyFile);
      const anchor = o.anchor ? (JSON.parse(await readFile(o.anchor, "utf8")) as unknown) : undefined;
      const r = await verifyAuditStream(ctx.redis, ctx.env.CITADEL_PREFIX, keys, anchor ? { anchor } : {});
      print(
        `${r.records} records from ${r.writers} writers: ${r.ok ? "chain intact" : `${r.problems.length} problem(s)`}`,
      );
      // Each writer's stream on a line of its own (the first 200), then what is wrong.
      for (const w of r.perWriter.slice(0, 200))
        print(
          `  ${w.writer}: ${w.records} records, ${w.state}, ${w.problems === 0 ? "ok" : `${w.problems} problem(s)`}`,
        );
      if (r.perWriter.length > 200) print(`  … and ${r.perWriter.length - 200} more writers`);
      for (const p of r.problems.slice(0, 50)) print(`  ${p}`);
      for (const n of r.notes) print(`  note: ${n}`);
      if (!r.ok) process.exitCode = 2;
    }),
  );
audit
  .command("anchor")
  .description(
    "verify the stream, then write every writer's head and the stream's counters, MACed, to keep outside Redis",
  )
  .option("--key-file <[role=]file>", "an audit key to verify with (repeatable; as for verify)", collect, [])
  .option("--out <file>", "write the anchor here instead of stdout")
  .action(
    withContext(async (ctx, o: { keyFile: string[]; out?: string }) => {
      const { report, anchor } = await createAuditAnchor(
        ctx.redis,
        ctx.env.CITADEL_PREFIX,
        verifierKeys(ctx.env, o.keyFile),
        ownAuditKey(ctx.env),
      );
      if (!anchor) {
        print(`not anchored: the stream does not verify (${report.problems.length} problem(s))`);
        for (const p of report.problems.slice(0, 50)) print(`  ${p}`);
        process.exitCode = 2;
        return;
      }
      const json = `${JSON.stringify(anchor, null, 2)}\n`;
      if (!o.out) {
        process.stdout.write(json);
        return;
      }
      await writeFile(o.out, json);
      print(
        `anchored ${Object.keys(anchor.heads).length} writers and ${Object.values(anchor.heads).reduce((n, h) => n + h.entriesAdded, 0)} entries at ${anchor.at} in ${o.out}`,
      );
    }),
  );

const apiFlags = (cmd: Command) =>
  cmd
    .option("--api <url>", "API base URL (default: CITADEL_API_URL, else .citadel/demo.json)")
    .option("--key <key>", "tenant API key (default: CITADEL_API_KEY, else .citadel/demo.json)");
const jobCommands = () => import("./commands/jobs.js");

apiFlags(
  program
    .command("enqueue")
    .description("submit a job over HTTP (reads the request JSON from a file or -)")
    .argument("<request>", "a JSON job request (docs/contract.md#jobs), or - for stdin")
    .option("--wait <ms>", "wait for the result up to this long", int),
).action(async (file: string, o: ApiFlags & { wait?: number }) => {
  const { withApi, printJson, finish } = await jobCommands();
  const { JobRequest, CitadelError: Refusal } = await import("@citadel/contracts");
  const { zodMessage } = await import("./zod-message.js");
  const { outcomeOf, submitFollowing } = await import("./api/outcome.js");
  await withApi(o, async (client) => {
    const text =
      file === "-"
        ? await new Response(process.stdin as unknown as ReadableStream).text()
        : await readFile(file, "utf8");
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch (err) {
      throw new Refusal("MALFORMED_JSON", `${file}: ${err instanceof Error ? err.message : "not JSON"}`);
    }
    const checked = JobRequest.safeParse(body);
    if (!checked.success) throw new Refusal("VALIDATION_FAILED", zodMessage(checked.error.issues));
    // The request as written goes to the API (its judgement, not this schema's defaults).
    const r = await submitFollowing(client, body as JobInput, o.wait || undefined, false);
    if ("accepted" in r) return printJson(r.accepted);
    printJson(r.view);
    finish(outcomeOf(r.view, o.wait));
  });
});

const jobs = program
  .command("jobs")
  .description(
    "a job's view, waiting for it, cancelling it (over HTTP; exit 0 completed, 2 failed, 3 cancelled, 4 not final)",
  );
apiFlags(jobs.command("get").description("print a job's view as JSON").argument("<id>")).action(
  async (id: string, o: ApiFlags) => (await jobCommands()).jobsGet(id, o),
);
apiFlags(
  jobs
    .command("wait")
    .description("wait until a job is final (long polls), then print its view as JSON")
    .argument("<id>")
    .option("--timeout <ms>", "give up after this long (exit 4); default: no limit", int),
).action(async (id: string, o: ApiFlags & { timeout?: number }) => (await jobCommands()).jobsWait(id, o));
apiFlags(
  jobs.command("cancel").description("cancel a queued job (a running one stops at its next check)").argument("<id>"),
).action(async (id: string, o: ApiFlags) => (await jobCommands()).jobsCancel(id, o));

apiFlags(
  program
    .command("submit")
    .description(
      "submit a job from .npy files (binary body), or a JSONL file of jobs with bounded concurrency and a results JSONL",
    )
    .option("--model <name>", "the model (with --input)")
    .option("--version <version>", "a routed version (default: routing picks)")
    .option("--input <name=file.npy>", "an input from a .npy file (repeatable)", collect, [])
    .option("--output <name>", "an output wanted (repeatable; default: those the output policy allows)", collect, [])
    .addOption(
      new Option("--priority <p>", "queue priority (high is a right the tenant must hold)").choices([
        "high",
        "normal",
        "low",
      ]),
    )
    .option("--timeout-ms <ms>", "the job's run-time bound", int)
    .option("--wait <ms>", "wait up to this long for the result, print the job's view (exit codes as `jobs wait`)", int)
    .option("--jsonl <file>", "one JSON job request per line (as POST /v1/jobs, plus an optional custom_id)")
    .option("--out <file>", "with --jsonl: write the results JSONL here (default: stdout)")
    .option("--concurrency <n>", "with --jsonl: jobs in flight at once", int, 8)
    .option("--timeout <ms>", "with --jsonl: per job, give up waiting after this long (RESULT_PENDING)", int),
).action(async (o: ApiFlags & SubmitFlags) => {
  const { withApi } = await jobCommands();
  await withApi(o, async (client, target) => {
    if (o.jsonl !== undefined) {
      if (o.model !== undefined || o.input.length > 0)
        throw new Error("--jsonl takes the jobs from the file: leave out --model and --input");
      if (o.concurrency < 1) throw new Error("--concurrency must be at least 1");
      const { submitJsonl, SUBMIT_RETRY } = await import("./commands/submit-jsonl.js");
      const { clientFor } = await import("./api/client.js");
      process.exitCode = await submitJsonl(clientFor(target, SUBMIT_RETRY), {
        file: o.jsonl,
        concurrency: o.concurrency,
        ...(o.out !== undefined ? { out: o.out } : {}),
        ...(o.timeout !== undefined ? { timeout: o.timeout } : {}),
      });
      return;
    }
    if (o.model === undefined) throw new Error("give --model <name> and --input <name>=<file.npy>, or --jsonl <file>");
    const { submitNpy } = await import("./commands/submit.js");
    await submitNpy(client, { ...o, model: o.model });
  });
});

program
  .command("demo")
  .description(
    "the whole path: dev keyring, seal and publish sample models, start API and workers, push jobs, show results",
  )
  .option("--jobs <n>", "jobs to submit", int, 240)
  .option("--workers <n>", "worker processes", int, 2)
  .option("--serve", "keep the fleet up and write .citadel/demo.json for other tools")
  .option("--publish-only", "seal and publish the sample models, then exit")
  .option("--no-verify", "skip comparing outputs with direct onnxruntime runs")
  .option("--dir <dir>", "state directory", ".citadel")
  .action(
    async (o: {
      jobs: number;
      workers: number;
      serve?: boolean;
      publishOnly?: boolean;
      verify: boolean;
      dir: string;
    }) => {
      try {
        const { runDemo } = await import("./commands/demo.js");
        process.exitCode = await runDemo({
          jobs: o.jobs,
          workers: o.workers,
          serve: !!o.serve,
          publishOnly: !!o.publishOnly,
          dir: o.dir,
          verify: o.verify,
        });
      } catch (err) {
        reportError(err);
      }
    },
  );

await program.parseAsync(process.argv);
