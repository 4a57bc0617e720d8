"""Prometheus metrics of one hub instance (own registry, so several hubs can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

DROP_REASONS = (
    "bad_topic",
    "malformed",
    "device_mismatch",
    "unknown_device",
    "revoked",
    "internal",
    "db_error",
    "backlog",
    "rate_limited",
)
KINDS = ("state", "telemetry", "reported", "events")


class HubMetrics:
    """Counters and gauges; label children are bound once because ingest touches them per message."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "edgefleet_hub_ingest_messages", "MQTT messages accepted, by topic kind", ["kind"], registry=r
        )
        self.dropped = Counter(
            "edgefleet_hub_ingest_dropped", "Messages or rows dropped, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "edgefleet_hub_ingest_duplicates",
            "Load reports seen before (boot_id, seq): written again (the store skips them), acknowledged again",
            registry=r,
        )
        self.acks_sent = Counter(
            "edgefleet_hub_telemetry_acks", "TelemetryAck messages published (per device and boot, batched)", registry=r
        )
        self.acks_forgotten = Counter(
            "edgefleet_hub_telemetry_acks_forgotten",
            "Stored reports not acknowledged because too many acks waited for a broker (the agent resends)",
            registry=r,
        )
        self.db_batches = Counter("edgefleet_hub_db_batches", "Ingest write transactions", registry=r)
        self.db_rows = Counter("edgefleet_hub_db_rows", "Telemetry rows written (before duplicates)", registry=r)
        self.provisioned = Counter(
            "edgefleet_hub_provision_requests", "Provisioning requests, by outcome", ["outcome"], registry=r
        )
        self.broker_connected = Gauge(
            "edgefleet_hub_broker_connected", "1 while the MQTT link to a broker is up", ["broker"], registry=r
        )
        self.accepted = {k: self.messages.labels(kind=k) for k in KINDS}
        self.drops = {reason: self.dropped.labels(reason=reason) for reason in DROP_REASONS}

    def online_gauge(self, fn: Callable[[], int]) -> None:
        """Report the number of online devices from `fn` at scrape time."""
        gauge = Gauge(
            "edgefleet_hub_devices_online", "Devices whose last state message was a birth", registry=self.registry
        )
        gauge.set_function(fn)

    def dropped_count(self, reason: str) -> float:
        """Current value of the drop counter for `reason` (tests, CLI)."""
        return float(self.drops[reason]._value.get())

    def render(self) -> bytes:
        """Text exposition format."""
        return generate_latest(self.registry)
