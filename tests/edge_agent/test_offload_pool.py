"""Offload against a REAL pool (`edge-agent serve --standalone` child process): client, choice, breaker."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from agent_support import AgentProcess, Reference, sample, standalone_config, start_agent
from aiohttp import web
from aiohttp.test_utils import TestClient

from edge_agent.app import Agent
from edge_agent.config import BreakerConfig, OffloadConfig
from edge_agent.http.v2 import POOL_HEADER, ROUTE_HEADER
from edge_agent.metrics import Metrics
from edge_agent.offload import OffloadRefused, OffloadRouter, PoolError
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE
from protocols.binary import HEADER_LENGTH, decode_response, encode_request
from protocols.messages import PoolEndpoint
from protocols.pipeline import PipelineSpec

pytestmark = pytest.mark.slow

FAST_BREAKER = BreakerConfig(consecutive_failures=2, open_s=0.3, half_open_probes=1)
OFFLOAD = OffloadConfig(breaker=FAST_BREAKER, probe_interval_s=0.1, connect_timeout_s=0.5)
BEST_EFFORT = PipelineSpec(name="shelf", model="tiny-cnn", priority="best_effort", deadline_ms=2000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_pool(port: int) -> AgentProcess:
    """A standalone agent on the zoo: the cloud pool."""
    args = ["serve", "--standalone", "--model-dir", str(PACKAGES_DIR), "--trust", str(ZOO_PUBLIC_KEY_FILE)]
    return start_agent([*args, "--port", str(port)])


@pytest.fixture
def pool() -> Iterator[tuple[AgentProcess, int]]:
    """A pool process on a known port (tests kill it and start another on the same port)."""
    port = free_port()
    process = start_pool(port)
    yield process, port
    process.stop()


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.05)


async def test_breaker_opens_when_pool_dies_and_closes_after_it_returns(
    pool: tuple[AgentProcess, int], reference: Reference
) -> None:
    process, port = pool
    metrics = Metrics()
    router = OffloadRouter(OFFLOAD, [PoolEndpoint(name="p1", url=f"http://127.0.0.1:{port}")], metrics=metrics)
    await router.start()
    try:
        batch = sample("tiny-cnn", 2, seed=5)
        chosen = router.pick("tiny-cnn", 1.0)
        assert chosen is not None and chosen.name == "p1"
        out = await router.infer(BEST_EFFORT, chosen, version="2", inputs={"input": batch}, outputs=None, timeout_s=5.0)
        np.testing.assert_array_equal(out["scores"], reference("tiny-cnn", batch))
        assert chosen.latency_s is not None and chosen.breaker.state == "closed"

        process.stop()  # the pool dies
        for _ in range(FAST_BREAKER.consecutive_failures):
            with pytest.raises(PoolError):
                await router.infer(
                    BEST_EFFORT, chosen, version="2", inputs={"input": batch}, outputs=None, timeout_s=2.0
                )
        assert chosen.breaker.state == "open"
        assert router.pick("tiny-cnn", 1.0) is None  # no pool: callers answer 503 at once
        assert metrics.pool_state.labels("p1")._value.get() == 2.0
        await asyncio.sleep(0.6)
        assert chosen.breaker.state == "open"  # health probes fail while it is down

        restarted = start_pool(port)  # back on the same port
        try:
            await wait_until(lambda: chosen.breaker.state == "half_open")  # background GET /v2/health/ready
            probe = router.pick("tiny-cnn", 1.0)
            assert probe is chosen
            out = await router.infer(
                BEST_EFFORT, chosen, version="2", inputs={"input": batch}, outputs=["scores"], timeout_s=5.0
            )
            np.testing.assert_array_equal(out["scores"], reference("tiny-cnn", batch))
            assert chosen.breaker.state == "closed"  # the probe succeeded: traffic flows again
            assert metrics.pool_state.labels("p1")._value.get() == 0.0
        finally:
            restarted.stop()
    finally:
        await router.aclose()


async def test_offload_never_pipelines_never_leave_the_device(pool: tuple[AgentProcess, int]) -> None:
    _, port = pool
    router = OffloadRouter(OFFLOAD, [PoolEndpoint(name="p1", url=f"http://127.0.0.1:{port}")])
    chosen = router.pick("tiny-cnn", 1.0)
    assert chosen is not None
    safety = PipelineSpec(name="collision", model="tiny-cnn", priority="safety", deadline_ms=50)
    assert safety.effective_offload == "never"
    with pytest.raises(OffloadRefused):
        await router.infer(
            safety, chosen, version="2", inputs={"input": sample("tiny-cnn", 1)}, outputs=None, timeout_s=1
        )
    assert chosen.outstanding == 0 and chosen.latency_s is None  # nothing was sent
    await router.aclose()


async def test_pool_choice_and_runtime_replacement(pool: tuple[AgentProcess, int]) -> None:
    _, port = pool
    url = f"http://127.0.0.1:{port}"
    router = OffloadRouter(OFFLOAD, [PoolEndpoint(name="a", url=url), PoolEndpoint(name="b", url=url)])
    a, b = router.pools()["a"], router.pools()["b"]
    a.latency_s, b.latency_s = 0.010, 0.020
    a.latency_at = b.latency_at = time.monotonic()
    assert router.pick("tiny-cnn", 1.0) is a  # equal outstanding: lower latency
    a.outstanding = 3
    assert router.pick("tiny-cnn", 1.0) is b  # fewer outstanding first
    assert router.pick("tiny-cnn", 0.015) is a  # b is less busy, but its latency does not fit 15 ms
    assert router.pick("tiny-cnn", 0.005) is None  # neither fits 5 ms
    router.set_pools([PoolEndpoint(name="a", url=url), PoolEndpoint(name="c", url=url, models=("tiny-mlp",))])
    assert router.pools()["a"] is a  # unchanged pools keep their breaker and latency
    assert set(router.pools()) == {"a", "c"}
    a.latency_s, a.latency_at = 0.5, time.monotonic()
    assert router.pick("tiny-cnn", 0.1) is None  # c does not serve tiny-cnn
    a.latency_at -= 2.0
    assert router.pick("tiny-cnn", 0.1) is a  # a stale latency no longer excludes it: one request refreshes it
    assert router.pick("tiny-mlp", 0.1) is router.pools()["c"]
    out = await router.infer(
        BEST_EFFORT.model_copy(update={"model": "tiny-mlp"}),
        router.pools()["c"],
        version="1",
        inputs={"input": sample("tiny-mlp", 1)},
        outputs=None,
        timeout_s=5.0,
    )
    assert out["logits"].shape == (1, 10)
    await router.aclose()


async def test_agent_offloads_best_effort_and_answers_fast_503_when_the_breaker_is_open(
    aiohttp_client: Any, tmp_path: Any, pool: tuple[AgentProcess, int], reference: Reference
) -> None:
    process, port = pool
    config = standalone_config(
        standalone=False,
        state_dir=tmp_path / "state",
        expose_models=False,
        pipelines=[
            {"name": "collision", "model": "tiny-cnn", "priority": "safety", "deadline_ms": 50},
            {"name": "shelf", "model": "tiny-cnn", "priority": "best_effort", "deadline_ms": 1000},
        ],
        # best_effort may not queue locally at all: "local is full" for every request.
        scheduler={"queue_limits": {"best_effort": 0}},
        pools=[{"name": "p1", "url": f"http://127.0.0.1:{port}"}],
        offload=OFFLOAD.model_dump(),
    )
    agent = Agent(config)
    app = agent.http
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    await agent.startup
    batch = sample("tiny-cnn", 3, seed=9)
    body, length = encode_request(inputs={"input": batch})
    headers = {HEADER_LENGTH: str(length)}

    async def call(name: str) -> tuple[int, dict[str, str], Any, float]:
        start = time.perf_counter()
        resp = await client.post(f"/v2/models/{name}/infer", data=body, headers=headers)
        raw = await resp.read()
        took = time.perf_counter() - start
        if resp.status != 200:
            return resp.status, dict(resp.headers), None, took
        header, arrays = decode_response(raw, int(resp.headers[HEADER_LENGTH]))
        return resp.status, dict(resp.headers), (header, arrays), took

    status, hdrs, (header, arrays), _ = await call("shelf")
    assert status == 200 and hdrs[ROUTE_HEADER] == "cloud" and hdrs[POOL_HEADER] == "p1"
    assert header["parameters"]["edgefleet_route"] == "cloud"
    np.testing.assert_array_equal(arrays["scores"], reference("tiny-cnn", batch))
    status, hdrs, (header, arrays), _ = await call("collision")
    assert status == 200 and hdrs[ROUTE_HEADER] == "local" and POOL_HEADER not in hdrs
    assert header["parameters"]["edgefleet_route"] == "local"

    process.stop()
    results = [await call("shelf") for _ in range(6)]
    assert all(r[0] == 503 and int(r[1]["Retry-After"]) >= 1 for r in results)
    assert max(r[3] for r in results[2:]) < 0.1  # breaker open: rejected at once, far below the 1 s deadline
    metrics = await (await client.get("/metrics")).text()
    assert 'edgefleet_pool_breaker_state{pool="p1"} 2.0' in metrics
    assert 'edgefleet_routes_total{model="shelf",route="cloud"} 1.0' in metrics
    assert 'edgefleet_routes_total{model="shelf",route="rejected"} 6.0' in metrics
    assert 'edgefleet_routes_total{model="collision",route="local"} 1.0' in metrics

    restarted = start_pool(port)
    try:
        await wait_until(lambda: pool_state(agent) != "open")
        status, hdrs, (_, arrays), _ = await call("shelf")
        assert status == 200 and hdrs[ROUTE_HEADER] == "cloud"
        np.testing.assert_array_equal(arrays["scores"], reference("tiny-cnn", batch))
        assert pool_state(agent) == "closed"
        loads = {p.name: p for p in make_stats(agent)}
        assert loads["shelf"].routes.cloud == 2 and loads["shelf"].routes.rejected == 6
    finally:
        restarted.stop()


def pool_state(agent: Agent) -> str:
    router = agent.core.router
    assert router is not None
    return router.pools()["p1"].breaker.state


def make_stats(agent: Agent) -> Any:
    return agent.core.stats.snapshot(1.0)
