"""Prometheus metrics of one hub instance (own registry, so several hubs can live in one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
# Offered overflow per cloud pool and model (what autoscalers read: deploy/k8s/pool-keda.yaml).
POOL_OFFERED_REQUESTS = "edgefleet_pool_offered_requests_per_second"
POOL_OFFERED_ROWS = "edgefleet_pool_offered_rows_per_second"

# (pool, model) -> (requests per second, rows per second)
PoolDemandSource = Callable[[], Mapping[tuple[str, str], tuple[float, float]]]


class _PoolDemand(Collector):
    """Gauges computed at scrape time from the fleet's latest reports."""

    def __init__(self, source: PoolDemandSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        labels = ["pool", "model"]
        requests = GaugeMetricFamily(
            POOL_OFFERED_REQUESTS, "Requests per second the fleet sends to a cloud pool (overflow)", labels=labels
        )
        rows = GaugeMetricFamily(
            POOL_OFFERED_ROWS, "Rows per second the fleet sends to a cloud pool (overflow)", labels=labels
        )
        for (pool, model), (rps, rows_ps) in sorted(self._source().items()):
            requests.add_metric([pool, model], rps)
            rows.add_metric([pool, model], rows_ps)
        yield requests
        yield rows


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

    def pool_demand(self, source: PoolDemandSource) -> None:
        """Export the offered overflow per pool and model from `source` at scrape time."""
        self.registry.register(_PoolDemand(source))

    def dropped_count(self, reason: str) -> float:
        """Current value of the drop counter for `reason` (tests, CLI)."""
        return float(self.drops[reason]._value.get())

    def render(self) -> bytes:
        """Text exposition format."""
        return generate_latest(self.registry)
