"""PipelineStats: per-interval counters, routes and p50/p99 from the fixed histogram."""

from __future__ import annotations

import threading

import pytest

from edge_agent.serving.stats import PipelineStats


def test_snapshot_counts_routes_errors_and_quantiles() -> None:
    stats = PipelineStats()
    depth = [3]
    stats.register("det", model="tiny-cnn", priority="safety", version="2", queue_depth=lambda: depth[0])
    for i in range(1, 101):
        stats.record("det", "local", i / 1000.0)  # 1..100 ms
    stats.record("det", "cloud", 0.2)
    stats.record("det", "rejected", 0.0)
    stats.record("det", "expired", 0.05)
    stats.record("det", "local", 0.01, ok=False)
    stats.record("det", "invalid", 0.0, ok=False)  # a 400: an error, not a rejection
    (load,) = stats.snapshot(interval_s=2.0)
    assert load.name == "det" and load.model == "tiny-cnn" and load.version == "2" and load.priority == "safety"
    assert load.requests_per_s == pytest.approx(105 / 2.0)
    assert (load.routes.local, load.routes.cloud, load.routes.rejected, load.routes.expired) == (101, 1, 1, 1)
    assert load.errors == 2
    assert load.p50_ms == pytest.approx(50.5, rel=0.06)
    assert load.p99_ms == pytest.approx(99.0, rel=0.06)
    assert load.queue_depth == 3
    (empty,) = stats.snapshot(interval_s=2.0)  # a new interval starts after each snapshot
    assert empty.requests_per_s == 0 and empty.p50_ms is None and empty.p99_ms is None


def test_unregistered_pipeline_is_counted_and_broken_gauge_is_zero() -> None:
    stats = PipelineStats()

    def broken() -> int:
        raise RuntimeError("gauge")

    stats.register("a", model="m", queue_depth=broken)
    stats.record("a", "local", 0.001)
    stats.record("b", "local", 120.0)  # beyond the last bucket: clamped, not an error
    a, b = stats.snapshot(1.0)
    assert a.queue_depth == 0 and b.model == "b" and b.p99_ms is not None and b.p99_ms > 60_000


def test_record_is_thread_safe() -> None:
    stats = PipelineStats()

    def work() -> None:
        for _ in range(5000):
            stats.record("p", "local", 0.002)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (load,) = stats.snapshot(1.0)
    assert load.routes.local == 20000
