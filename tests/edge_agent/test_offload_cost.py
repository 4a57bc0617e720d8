"""Cost-aware pool choice and the per-pool offered overflow in telemetry, against a REAL pool process."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from agent_support import AgentProcess, sample, standalone_config, start_agent
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from edge_agent.app import Agent
from edge_agent.config import OffloadConfig
from edge_agent.http.v2 import POOL_HEADER, ROUTE_HEADER
from edge_agent.offload import OffloadRouter
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE
from protocols.binary import HEADER_LENGTH, encode_request
from protocols.messages import PoolEndpoint, PoolOffer

pytestmark = pytest.mark.slow

OFFLOAD = OffloadConfig(probe_interval_s=0.1, connect_timeout_s=0.5)


@pytest.fixture(scope="module")
def pool_url() -> Iterator[str]:
    """A standalone agent on the zoo: the cloud pool (declared several times under different names)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    args = ["serve", "--standalone", "--model-dir", str(PACKAGES_DIR), "--trust", str(ZOO_PUBLIC_KEY_FILE)]
    process: AgentProcess = start_agent([*args, "--port", str(port)])
    yield f"http://127.0.0.1:{port}"
    process.stop()


def test_cost_is_optional_and_positive() -> None:
    old = PoolEndpoint.model_validate({"name": "p", "url": "http://pool"})  # a message from before `cost`
    assert old.cost == 1.0
    with pytest.raises(ValidationError):
        PoolEndpoint(name="p", url="http://pool", cost=0)


async def test_cheapest_pool_that_meets_the_deadline_for_best_effort_fastest_otherwise(pool_url: str) -> None:
    endpoints = [PoolEndpoint(name="fast", url=pool_url, cost=4.0), PoolEndpoint(name="cheap", url=pool_url, cost=0.5)]
    router = OffloadRouter(OFFLOAD, endpoints)
    fast, cheap = router.pools()["fast"], router.pools()["cheap"]
    fast.latency_s, cheap.latency_s = 0.010, 0.040
    fast.latency_at = cheap.latency_at = time.monotonic()
    assert router.pick("tiny-cnn", 1.0) is fast  # standard: the fastest, whatever it costs
    assert router.pick("tiny-cnn", 1.0, cheapest=True) is cheap  # best-effort: the cheapest that fits
    assert router.pick("tiny-cnn", 0.020, cheapest=True) is fast  # cheap's 40 ms miss the 20 ms left
    assert router.pick("tiny-cnn", 0.005, cheapest=True) is None  # nothing fits 5 ms
    cheap.outstanding = OFFLOAD.max_outstanding
    assert router.pick("tiny-cnn", 1.0, cheapest=True) is fast  # the cheap one is full
    cheap.outstanding = 0
    router.set_pools([*endpoints, PoolEndpoint(name="cheap2", url=pool_url, cost=0.5)])
    cheap2 = router.pools()["cheap2"]
    cheap2.latency_s, cheap2.latency_at = 0.030, time.monotonic()
    assert router.pick("tiny-cnn", 1.0, cheapest=True) is cheap2  # equal cost: the faster of the two
    await router.aclose()


async def test_agent_routes_best_effort_by_cost_and_reports_offered_overflow_per_pool(
    aiohttp_client: Any, tmp_path: Any, pool_url: str
) -> None:
    config = standalone_config(
        standalone=False,
        state_dir=tmp_path / "state",
        expose_models=False,
        pipelines=[
            {"name": "shelf", "model": "tiny-cnn", "priority": "best_effort", "deadline_ms": 2000},
        ],
        # best-effort may not queue locally: every request of it is overflow
        scheduler={"queue_limits": {"best_effort": 0}},
        pools=[
            {"name": "fast", "url": pool_url, "cost": 3.0},
            {"name": "cheap", "url": pool_url, "cost": 0.25},
        ],
        offload=OFFLOAD.model_dump(),
    )
    agent = Agent(config)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(agent.http)
    await agent.startup
    router = agent.core.router
    assert router is not None

    async def call(name: str, rows: int) -> str:
        body, length = encode_request(inputs={"input": sample("tiny-cnn", rows, seed=rows)})
        resp = await client.post(f"/v2/models/{name}/infer", data=body, headers={HEADER_LENGTH: str(length)})
        await resp.read()
        assert resp.status == 200 and resp.headers[ROUTE_HEADER] == "cloud"
        return resp.headers[POOL_HEADER]

    agent.core.stats.snapshot(1.0)  # start a clean interval
    shelf = [await call("shelf", rows) for rows in (1, 2, 3, 4)]
    assert shelf == ["cheap"] * 4  # best-effort: the cheapest pool (declared second)
    # The cheap pool is known to take longer than the deadline leaves: best-effort goes to the dearer one.
    cheap = router.pools()["cheap"]
    cheap.latency_s, cheap.latency_at = 5.0, time.monotonic() + 60.0  # fresh for the whole test
    late = [await call("shelf", 2) for _ in range(3)]
    assert late == ["fast"] * 3
    loads = {p.name: p for p in agent.core.stats.snapshot(1.0)}
    assert loads["shelf"].offered == (
        PoolOffer(pool="cheap", requests=4, rows=10),
        PoolOffer(pool="fast", requests=3, rows=6),
    )
    assert loads["shelf"].routes.cloud == 7
    assert agent.core.stats.snapshot(1.0)[0].offered == ()  # a new interval starts empty
