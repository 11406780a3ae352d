"""Prometheus metrics of the hub, in a registry of its own so several hubs can share a process (tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages_in = Counter(
            "hub_messages_in", "Messages consumed from the triage queue", ["kind"], registry=self.registry
        )
        self.results_stored = Counter(
            "hub_results_stored", "New triage results stored", registry=self.registry
        )
        self.duplicates = Counter(
            "hub_duplicate_results",
            "Redelivered or duplicate results absorbed by the store",
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "hub_dead_letters", "Messages moved to the dead-letter queue", ["reason"], registry=self.registry
        )
        self.batch_size = Histogram(
            "hub_batch_size",
            "Results re-scored per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.rescore_seconds = Histogram(
            "hub_rescore_seconds",
            "Time to parse, re-score and store one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.alerts = Counter(
            "hub_alerts",
            "Hospital messages by kind and emergency type",
            ["kind", "emergency_type"],
            registry=self.registry,
        )
        self.suppressed = Counter(
            "hub_alerts_suppressed",
            "Urgent results that repeated an alert within the window",
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "hub_acknowledgement_seconds",
            "From first delivery of an alert to the hospital's acknowledgement",
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.resends = Counter(
            "hub_alert_resends", "Alerts sent again for lack of acknowledgement", registry=self.registry
        )
        self.escalations = Counter(
            "hub_escalations", "Alerts escalated to a backup hospital", registry=self.registry
        )
        self.consumer_lag = Gauge(
            "hub_consumer_lag_messages",
            "Messages waiting in a triage queue (the urgent or the routine lane)",
            ["queue"],
            registry=self.registry,
        )
        self.unconfirmed = Gauge(
            "hub_unconfirmed_publishes",
            "Messages published and not yet confirmed by the broker",
            registry=self.registry,
        )
        self.connected = Gauge(
            "hub_broker_connected", "1 while connected to the broker", registry=self.registry
        )
        self.in_progress = Gauge(
            "hub_inputs_in_progress",
            "Deliveries taken from the queue and not yet acknowledged (batching or waiting for confirms)",
            registry=self.registry,
        )
