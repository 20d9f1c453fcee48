"""Intake counters and the latency histogram, in a Prometheus registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class IntakeMetrics:
    """Intake counters in a registry of their own (``GET /metrics`` renders it)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "oms_intake_orders_received",
            "Orders received (batch items count one each)",
            ["channel"],
            registry=r,
        )
        self.accepted = Counter(
            "oms_intake_orders_accepted",
            "Orders accepted (subscription started)",
            ["channel"],
            registry=r,
        )
        self.duplicates = Counter(
            "oms_intake_orders_duplicate",
            "Repeats of accepted orders (first result returned)",
            ["channel"],
            registry=r,
        )
        self.rejected = Counter(
            "oms_intake_orders_rejected",
            "Orders rejected, by the rule that fired",
            ["channel", "rule", "code"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "oms_intake_dead_lettered",
            "Payloads or orders written to the dead-letter table",
            ["channel", "code"],
            registry=r,
        )
        self.retries = Counter(
            "oms_intake_retries", "Retries of transient failures", ["channel", "code"], registry=r
        )
        self.ignored = Counter(
            "oms_intake_events_ignored",
            "Valid payloads without an order (other Stripe events)",
            ["channel"],
            registry=r,
        )
        self.spooled = Counter(
            "oms_intake_spooled",
            "Dead letters written to the spool file (database down)",
            ["channel"],
            registry=r,
        )
        self.latency = Histogram(
            "oms_intake_request_seconds",
            "Time to answer one intake payload",
            ["channel", "outcome"],
            buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of every intake metric."""
        return generate_latest(self.registry)
