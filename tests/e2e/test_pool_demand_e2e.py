"""Issue 17, pool demand end to end: real mosquitto (production mTLS + ACL), `cloud-hub serve`, a real pool
(`edge-agent serve --standalone`) and two provisioned `edge-agent serve` devices whose best-effort traffic
all overflows to it. Under a known paced load the hub's exported pool demand must equal what the devices
really offered the pool, within 5 %."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from rollout_support import Rig

from cloud_hub.metrics import POOL_OFFERED_REQUESTS, POOL_OFFERED_ROWS
from deploy.local import stack
from protocols.binary import HEADER_LENGTH, encode_request

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

INTERVAL_S = 3.0  # the devices' telemetry interval
SHELF = stack.Pipeline("shelf", "best_effort", 2000, offload="overflow")
# device -> (requests per second, rows per request): every request overflows (best-effort local queue 0)
LOAD = {"dev-a": (12.0, 2), "dev-b": (8.0, 3)}
STEADY_S = 2 * INTERVAL_S + 1.0  # load before the first scrape: a whole report interval under steady load
SCRAPES = 3


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    try:
        await r.start()
        yield r
    finally:
        r.stop()


class Sender:
    """Open-loop paced requests to one agent (each on its schedule, not after the previous answer)."""

    def __init__(self, url: str, rate: float, rows: int) -> None:
        self.url, self.rate = url, rate
        batch = np.random.default_rng(rows).standard_normal((rows, 3, 64, 64)).astype(np.float32)
        self.body, length = encode_request(inputs={"input": batch})
        self.headers = {HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"}
        self.sent: list[float] = []  # send times (monotonic)
        self.routes: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            tasks: set[asyncio.Task[None]] = set()
            start = time.monotonic()
            while not stop.is_set():
                self.sent.append(time.monotonic())
                task = asyncio.create_task(self._one(session))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await asyncio.sleep(max(0.0, start + len(self.sent) / self.rate - time.monotonic()))
            await asyncio.gather(*tasks)

    async def _one(self, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{self.url}/v2/models/shelf/infer", data=self.body, headers=self.headers) as resp:
            await resp.read()
            self.routes.append(resp.headers.get("X-Edgefleet-Route", str(resp.status)))

    def rate_between(self, t0: float, t1: float) -> float:
        return sum(1 for t in self.sent if t0 <= t < t1) / (t1 - t0)


async def scrape(rig: Rig) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=str(rig.hub_dir / "pki" / "ca.pem"))
    async with aiohttp.ClientSession() as session, session.get(f"{rig.hub_url}/metrics", ssl=ctx) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        family.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name in (POOL_OFFERED_REQUESTS, POOL_OFFERED_ROWS)
        for sample in family.samples
        if sample.labels == {"pool": "cloud", "model": stack.MODEL}
    }


async def test_exported_pool_demand_equals_the_offered_overflow_within_5_percent(rig: Rig) -> None:
    _, pool_url = await stack.start_pool(rig.sup, rig.workdir)
    agents = {}
    for device_id in LOAD:
        agent = await rig.add_agent(device_id, {"fleet": "demo"}, start=False)
        stack.agent_toml(
            agent.directory,
            (SHELF,),
            pool_url=pool_url,
            best_effort_queue=0,
            fleet_extra=[f"telemetry_interval_s = {INTERVAL_S}"],
        )
        await rig.start_agent(agent)
        agents[device_id] = agent
    assert await scrape(rig) == {}  # no overflow yet: no series
    senders = {d: Sender(agents[d].url, rate, rows) for d, (rate, rows) in LOAD.items()}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in senders.values()]
    try:
        t0 = time.monotonic()
        await asyncio.sleep(STEADY_S)
        scrapes = []
        for _ in range(SCRAPES):
            scrapes.append(await scrape(rig))
            await asyncio.sleep(INTERVAL_S)
        t1 = time.monotonic() - INTERVAL_S
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    for d, sender in senders.items():
        cloud = sender.routes.count("cloud")
        assert cloud >= 0.99 * len(sender.routes), f"{d}: not everything overflowed to the pool: {sender.routes}"
    # What the devices offered the pool while the scraped reports were made (from one interval before the first
    # scrape to the last one), from the senders' own clocks.
    offered_rps = sum(s.rate_between(t0 + STEADY_S - INTERVAL_S, t1) for s in senders.values())
    offered_rows = sum(s.rate_between(t0 + STEADY_S - INTERVAL_S, t1) * LOAD[d][1] for d, s in senders.items())
    got_rps = [s.get(POOL_OFFERED_REQUESTS, 0.0) for s in scrapes]
    got_rows = [s.get(POOL_OFFERED_ROWS, 0.0) for s in scrapes]
    mean_rps, mean_rows = sum(got_rps) / SCRAPES, sum(got_rows) / SCRAPES
    print(
        f"pool demand e2e: exported {mean_rps:.3f} req/s (scrapes {[round(v, 3) for v in got_rps]}) vs offered "
        f"{offered_rps:.3f} ({(mean_rps / offered_rps - 1) * 100:+.2f} %); exported {mean_rows:.3f} rows/s "
        f"(scrapes {[round(v, 3) for v in got_rows]}) vs offered {offered_rows:.3f} "
        f"({(mean_rows / offered_rows - 1) * 100:+.2f} %)"
    )
    assert abs(mean_rps - offered_rps) <= 0.05 * offered_rps
    assert abs(mean_rows - offered_rows) <= 0.05 * offered_rows

    # The load stopped: the next reports offer nothing, and the series go to 0.
    async def idle() -> bool:
        return (await scrape(rig)).get(POOL_OFFERED_REQUESTS, 0.0) == 0.0

    deadline = time.monotonic() + 4 * INTERVAL_S
    while not await idle():
        assert time.monotonic() < deadline, "pool demand did not fall to 0 after the load stopped"
        await asyncio.sleep(0.5)
