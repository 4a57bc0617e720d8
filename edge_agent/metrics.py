"""Prometheus metrics of the agent, in a registry of its own (one per app, so tests never collide)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


# One meaning per label on every series: `model` is the V2 name a client calls (a pipeline); series of a
# model version (batches, queues, readiness) carry `name` and `version`; edgefleet_pipeline_info maps one to
# the other, so a dashboard filtered on pipelines can select their model versions.
VERSION_LABELS = ["name", "version"]


def _name_version(key: str) -> list[str]:
    """["name", "version"] of a "name:version" queue key (neither part may contain ':')."""
    name, _, version = key.partition(":")
    return [name, version]


class _StateCollector(Collector):
    """Reads queue depth, readiness and the served pipelines at scrape time: the hot path pays nothing."""

    def __init__(
        self,
        queue_rows: Callable[[], dict[str, int]],
        model_ready: Callable[[], dict[str, bool]],
        pipelines: Callable[[], dict[str, tuple[str, str]]] | None = None,
    ) -> None:
        self._queue_rows = queue_rows
        self._model_ready = model_ready
        self._pipelines = pipelines

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "edgefleet_queue_depth_rows", "Rows waiting in a model version's queue.", labels=VERSION_LABELS
        )
        for key, rows in self._queue_rows().items():
            depth.add_metric(_name_version(key), rows)
        yield depth
        ready = GaugeMetricFamily(
            "edgefleet_model_ready",
            "1 if the model version is warmed up (0: loading, or failed).",
            labels=VERSION_LABELS,
        )
        for key, ok in self._model_ready().items():
            ready.add_metric(_name_version(key), 1.0 if ok else 0.0)
        yield ready
        if self._pipelines is not None:
            info = GaugeMetricFamily(
                "edgefleet_pipeline_info",
                "1 per served V2 name (`model`) with the model version (`name`, `version`) it runs on.",
                labels=["model", *VERSION_LABELS],
            )
            for pipeline, (name, version) in self._pipelines().items():
                info.add_metric([pipeline, name, version], 1.0)
            yield info


class Metrics:
    """Request, error, latency, batch and queue metrics; label children cached for the hot path."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edgefleet_requests",
            "Inference requests by V2 model name and HTTP status.",
            ["model", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "edgefleet_request_errors",
            "Failed requests by V2 model name and error kind.",
            ["model", "kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgefleet_request_latency_seconds",
            "Request latency from its first byte (as the event loop read it) to the response.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "edgefleet_batch_size_rows",
            "Rows per executed batch.",
            VERSION_LABELS,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "edgefleet_inference_duration_seconds",
            "Runtime time per batch.",
            VERSION_LABELS,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        # The deploy/ Grafana dashboard reads edgefleet_routes_total{model, route}: keep the names.
        self.routes = Counter(
            "edgefleet_routes",
            "Requests by V2 model name and where they went: local, cloud, rejected (503 at admission), expired "
            "(503), invalid (400).",
            ["model", "route"],
            registry=self.registry,
        )
        self.pool_state = Gauge(
            "edgefleet_pool_breaker_state",
            "Circuit breaker state of a cloud pool: 0 closed, 1 half-open, 2 open.",
            ["pool"],
            registry=self.registry,
        )
        self.pool_latency = Histogram(
            "edgefleet_pool_latency_seconds",
            "Round trip of requests answered by a cloud pool.",
            ["pool"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._outcome_children: dict[tuple[str, str], Counter] = {}
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._batch_children: dict[str, tuple[Histogram, Histogram]] = {}
        # Running totals for Triton's statistics extension (http/triton.py): per V2 name, [successes,
        # their seconds, failures, their seconds, unix time of the last one]; per model version, batch size
        # -> [executions, seconds].
        self.request_totals: dict[str, list[float]] = {}
        self.batch_totals: dict[str, dict[int, list[float]]] = {}

    def watch(
        self,
        queue_rows: Callable[[], dict[str, int]],
        model_ready: Callable[[], dict[str, bool]],
        pipelines: Callable[[], dict[str, tuple[str, str]]] | None = None,
    ) -> None:
        """Export queue depth, readiness and pipeline -> model version, read from the core at scrape time."""
        self.registry.register(_StateCollector(queue_rows, model_ready, pipelines))

    def observe_request(self, model: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        child = self._request_children.get((model, code))
        if child is None:
            child = self._request_children[(model, code)] = self.requests.labels(model, str(code))
        child.inc()
        hist = self._latency_children.get(model)
        if hist is None:
            hist = self._latency_children[model] = self.latency.labels(model)
        hist.observe(seconds)
        totals = self.request_totals.get(model)
        if totals is None:
            totals = self.request_totals[model] = [0, 0.0, 0, 0.0, 0.0]
        slot = 0 if code == 200 else 2
        totals[slot] += 1
        totals[slot + 1] += seconds
        totals[4] = time.time()

    def observe_error(self, model: str, kind: str) -> None:
        """Count one failed request by error kind."""
        self.errors.labels(model, kind).inc()

    def observe_batch(self, model: str, rows: int, seconds: float) -> None:
        """Record one executed batch of model version `model` ("name:version"; a BatchObserver)."""
        children = self._batch_children.get(model)
        if children is None:
            labels = _name_version(model)
            children = self._batch_children[model] = (self.batch_size.labels(*labels), self.inference.labels(*labels))
        children[0].observe(rows)
        children[1].observe(seconds)
        sizes = self.batch_totals.setdefault(model, {})
        tally = sizes.get(rows)
        if tally is None:
            tally = sizes[rows] = [0, 0.0]
        tally[0] += 1
        tally[1] += seconds

    def observe_outcome(self, model: str, outcome: str) -> None:
        """Count one request by where it went (local, cloud, rejected, expired): the `route` label."""
        child = self._outcome_children.get((model, outcome))
        if child is None:
            child = self._outcome_children[(model, outcome)] = self.routes.labels(model, outcome)
        child.inc()

    def set_pool_state(self, pool: str, state: str) -> None:
        """Export a pool's circuit breaker state."""
        self.pool_state.labels(pool).set(BREAKER_STATES[state])

    def observe_pool_latency(self, pool: str, seconds: float) -> None:
        """Record one round trip answered by a pool."""
        self.pool_latency.labels(pool).observe(seconds)

    def forget_pool(self, pool: str) -> None:
        """Drop the series of a pool that was removed."""
        for metric in (self.pool_state, self.pool_latency):
            with contextlib.suppress(KeyError):
                metric.remove(pool)
