"""Pool demand end to end (issue 17): paced overflow load on real agents, the hubs' exported demand scraped.

`measure` starts a real pool and provisioned agents whose best-effort pipeline always overflows to it, sends
a known paced load, scrapes every hub replica's /metrics once per report interval and returns the exported
figures (summed over replicas) next to what the devices really offered."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from rollout_support import Rig

from cloud_hub.metrics import POOL_OFFERED_REQUESTS, POOL_OFFERED_ROWS
from deploy.local import stack
from protocols.binary import HEADER_LENGTH, encode_request

INTERVAL_S = 3.0  # the devices' telemetry interval
SHELF = stack.Pipeline("shelf", "best_effort", 2000, offload="overflow")
# device -> (requests per second, rows per request): every request overflows (best-effort local queue 0)
LOAD = {"dev-a": (12.0, 2), "dev-b": (8.0, 3)}
SCRAPES = 3


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


async def scrape(rig: Rig, url: str) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=str(rig.hub_dir / "pki" / "ca.pem"))
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics", ssl=ctx) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        family.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name in (POOL_OFFERED_REQUESTS, POOL_OFFERED_ROWS)
        for sample in family.samples
        if sample.labels == {"pool": "cloud", "model": stack.MODEL}
    }


PER_REPLICA: list[list[float]] = []  # requests/s of each replica, per scrape_all (printed by the tests)


async def scrape_all(rig: Rig, urls: list[str]) -> dict[str, float]:
    """Pool demand summed over hub replicas (what the KEDA query's sum() reads)."""
    total: dict[str, float] = {}
    shares = []
    for url in urls:
        figures = await scrape(rig, url)
        shares.append(figures.get(POOL_OFFERED_REQUESTS, 0.0))
        for name, value in figures.items():
            total[name] = total.get(name, 0.0) + value
    PER_REPLICA.append(shares)
    return total


@dataclass
class Measured:
    """Exported (mean over the scrapes, and each scrape) and offered figures, requests and rows per second."""

    exported_rps: float
    exported_rows: float
    scrapes_rps: list[float]
    scrapes_rows: list[float]
    offered_rps: float
    offered_rows: float

    def line(self, label: str) -> str:
        return (
            f"{label}: exported {self.exported_rps:.3f} req/s (scrapes {[round(v, 3) for v in self.scrapes_rps]}) "
            f"vs offered {self.offered_rps:.3f} ({(self.exported_rps / self.offered_rps - 1) * 100:+.2f} %); "
            f"exported {self.exported_rows:.3f} rows/s (scrapes {[round(v, 3) for v in self.scrapes_rows]}) vs "
            f"offered {self.offered_rows:.3f} ({(self.exported_rows / self.offered_rows - 1) * 100:+.2f} %)"
        )


async def measure(
    rig: Rig, urls: list[str], *, lag_intervals: int, load: dict[str, tuple[float, int]] = LOAD
) -> Measured:
    """Start the pool and the agents, run the load, scrape; then wait until the demand falls back to 0.

    `lag_intervals`: how many report intervals old the latest report a replica holds may be (1 for one hub,
    N for N replicas splitting telemetry): the load runs that long plus one interval before the first scrape."""
    _, pool_url = await stack.start_pool(rig.sup, rig.workdir)
    agents = {}
    for device_id in load:
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
    assert await scrape_all(rig, urls) == {}  # no overflow yet: no series
    steady_s = (lag_intervals + 1) * INTERVAL_S + 1.0
    senders = {d: Sender(agents[d].url, rate, rows) for d, (rate, rows) in load.items()}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in senders.values()]
    try:
        t0 = time.monotonic()
        await asyncio.sleep(steady_s)
        scrapes = []
        for _ in range(SCRAPES):
            scrapes.append(await scrape_all(rig, urls))
            await asyncio.sleep(INTERVAL_S)
        t1 = time.monotonic() - INTERVAL_S
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    for d, sender in senders.items():
        cloud = sender.routes.count("cloud")
        assert cloud >= 0.99 * len(sender.routes), f"{d}: not everything overflowed to the pool: {sender.routes}"
    # What the devices offered the pool while the scraped reports were made, from the senders' own clocks.
    since = t0 + steady_s - lag_intervals * INTERVAL_S
    got_rps = [s.get(POOL_OFFERED_REQUESTS, 0.0) for s in scrapes]
    got_rows = [s.get(POOL_OFFERED_ROWS, 0.0) for s in scrapes]
    measured = Measured(
        exported_rps=sum(got_rps) / SCRAPES,
        exported_rows=sum(got_rows) / SCRAPES,
        scrapes_rps=got_rps,
        scrapes_rows=got_rows,
        offered_rps=sum(s.rate_between(since, t1) for s in senders.values()),
        offered_rows=sum(s.rate_between(since, t1) * load[d][1] for d, s in senders.items()),
    )
    # The load stopped: the next reports offer nothing, and the series go to 0.
    deadline = time.monotonic() + (lag_intervals + 3) * INTERVAL_S
    while (await scrape_all(rig, urls)).get(POOL_OFFERED_REQUESTS, 0.0) != 0.0:
        assert time.monotonic() < deadline, "pool demand did not fall to 0 after the load stopped"
        await asyncio.sleep(0.5)
    return measured
