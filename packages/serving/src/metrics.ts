import { counter, Gauge, gauge, histogram, type Registry } from "@citadel/telemetry";

/** Worker metrics, named after Triton's where they mean the same thing. */
export function workerMetrics(registry: Registry) {
  return {
    success: counter(registry, "citadel_inference_request_success_total", "Jobs completed", ["model", "version"]),
    failure: counter(registry, "citadel_inference_request_failure_total", "Jobs failed, by reason", [
      "model",
      "version",
      "reason",
    ]),
    inferenceCount: counter(registry, "citadel_inference_count_total", "Samples inferred", ["model", "version"]),
    execCount: counter(registry, "citadel_inference_exec_count_total", "Model executions (batches)", [
      "model",
      "version",
    ]),
    queueDuration: histogram(registry, "citadel_inference_queue_duration_seconds", "Accepted → run start", [
      "model",
      "version",
    ]),
    computeDuration: histogram(registry, "citadel_inference_compute_duration_seconds", "session.run time per batch", [
      "model",
      "version",
    ]),
    modelLoads: counter(registry, "citadel_model_loads_total", "Model load attempts by outcome", [
      "model",
      "version",
      "outcome",
    ]),
    loadPhase: histogram(
      registry,
      "citadel_model_load_phase_seconds",
      "Model load time by phase: fetch, key (unwrap), decrypt, session (create), first_run",
      ["model", "version", "phase"],
    ),
    providerInfo: gauge(registry, "citadel_execution_provider_info", "Execution provider in use (1)", [
      "model",
      "version",
      "provider",
    ]),
    modelsLoaded: gauge(registry, "citadel_models_loaded", "Model sessions this worker holds", []),
    modelsLoadedBytes: gauge(
      registry,
      "citadel_models_loaded_bytes",
      "Plaintext bytes of the model sessions this worker holds",
      [],
    ),
    modelLoadsWaiting: gauge(
      registry,
      "citadel_model_loads_waiting",
      "Model loads waiting for room: every model held is busy",
      [],
    ),
    modelEvictions: counter(
      registry,
      "citadel_model_evictions_total",
      "Models unloaded to make room for another (least recently used)",
      ["model", "version"],
    ),
    circuitState: gauge(registry, "citadel_circuit_state", "0 closed, 1 half-open, 2 open", ["model"]),
    runnerRestarts: counter(registry, "citadel_runner_restarts_total", "Runners abandoned and replaced", ["reason"]),
    healthy: gauge(registry, "citadel_worker_healthy", "1 when the worker can serve", []),
    batchSize: histogram(
      registry,
      "citadel_batch_size",
      "Samples per execution",
      ["model"],
      [1, 2, 4, 8, 16, 32, 64, 128, 256],
    ),
  };
}
export type WorkerMetrics = ReturnType<typeof workerMetrics>;

/**
 * citadel_vault_up: 1 when Vault answers `sys/health` and is unsealed, 0 when it is
 * unreachable or sealed; probed at each scrape, so it is current even when no model
 * has loaded for a while. Only processes that use Vault register it.
 */
export function vaultUpGauge(registry: Registry, reachable: () => Promise<boolean>): Gauge {
  return new Gauge({
    name: "citadel_vault_up",
    help: "1 when Vault is reachable and unsealed",
    registers: [registry],
    async collect() {
      this.set((await reachable()) ? 1 : 0);
    },
  });
}
