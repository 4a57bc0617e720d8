"""Prometheus metrics of the agent, in a registry of its own (one per app, so tests never collide)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _StateCollector(Collector):
    """Reads queue depth and readiness at scrape time, so the hot path pays nothing for them."""

    def __init__(self, queue_rows: Callable[[], dict[str, int]], model_ready: Callable[[], dict[str, bool]]) -> None:
        self._queue_rows = queue_rows
        self._model_ready = model_ready

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("edgefleet_queue_depth_rows", "Rows waiting in a model's queue.", labels=["model"])
        for key, rows in self._queue_rows().items():
            depth.add_metric([key], rows)
        yield depth
        ready = GaugeMetricFamily("edgefleet_model_ready", "1 if the model version is warmed up.", labels=["model"])
        for key, ok in self._model_ready().items():
            ready.add_metric([key], 1.0 if ok else 0.0)
        yield ready


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
            "Request latency from body read to response.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "edgefleet_batch_size_rows",
            "Rows per executed batch.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "edgefleet_inference_duration_seconds",
            "Runtime time per batch.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._batch_children: dict[str, tuple[Histogram, Histogram]] = {}

    def watch(self, queue_rows: Callable[[], dict[str, int]], model_ready: Callable[[], dict[str, bool]]) -> None:
        """Export queue depth and readiness read from the core at scrape time."""
        self.registry.register(_StateCollector(queue_rows, model_ready))

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

    def observe_error(self, model: str, kind: str) -> None:
        """Count one failed request by error kind."""
        self.errors.labels(model, kind).inc()

    def observe_batch(self, model: str, rows: int, seconds: float) -> None:
        """Record one executed batch (a BatchObserver)."""
        children = self._batch_children.get(model)
        if children is None:
            children = self._batch_children[model] = (self.batch_size.labels(model), self.inference.labels(model))
        children[0].observe(rows)
        children[1].observe(seconds)
