import { counter, gauge, histogram, type Registry } from "@citadel/telemetry";

export function apiMetrics(registry: Registry) {
  return {
    requests: counter(registry, "citadel_api_requests_total", "HTTP requests", ["route", "method", "status"]),
    duration: histogram(registry, "citadel_api_request_duration_seconds", "HTTP request duration", ["route", "method"]),
    rejections: counter(registry, "citadel_api_rejections_total", "Refused requests by reason", [
      "tenant",
      "model",
      "reason",
    ]),
    accepted: counter(registry, "citadel_jobs_accepted_total", "Jobs accepted", ["tenant", "model"]),
    // What extraction by probing is measured in: one job may carry many samples.
    samples: counter(registry, "citadel_api_samples_total", "Samples (batch items) accepted", ["tenant", "model"]),
    boardDenials: counter(registry, "citadel_board_denials_total", "Bull Board requests refused", ["reason"]),
    // delivered, retrying (an attempt failed, another follows), failed (attempts spent), refused (target or right), skipped (no URL)
    webhookDeliveries: counter(registry, "citadel_webhook_deliveries_total", "Webhook delivery attempts by outcome", [
      "tenant",
      "outcome",
    ]),
    pending: gauge(registry, "citadel_queue_pending_jobs", "Jobs in each queue state", ["model", "state"]),
    oldest: gauge(
      registry,
      "citadel_queue_oldest_waiting_seconds",
      "Age of the oldest of the jobs a worker would take next (the heads of the wait list and of the prioritized set, where normal jobs wait in fair-share order); it grows while no worker takes any",
      ["model"],
    ),
    // Final outcomes whose quota release, batch line and notification the outbox relay has not applied yet.
    outbox: gauge(registry, "citadel_outbox_entries", "Entries waiting in a queue's outbox", ["model"]),
  };
}
export type ApiMetrics = ReturnType<typeof apiMetrics>;
