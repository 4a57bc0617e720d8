"""Pool demand on the hub's /metrics: real mosquitto (mTLS, hub CA), real paho devices with provisioned
identities, reports made by the agent's own PipelineStats under a known, timed overflow load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from devices_support import TOPICS, birth, client_ssl, will
from hub_support import hub_config
from prometheus_client.parser import text_string_to_metric_families
from rig import Mosquitto
from test_hub_api import Api
from test_hub_ingest import _device, until

from cloud_hub.app import Hub, serve_hub
from cloud_hub.fleet.demand import STALE_INTERVALS, PoolDemand
from cloud_hub.fleet.live import LiveFleet
from cloud_hub.metrics import POOL_OFFERED_REQUESTS, POOL_OFFERED_ROWS, HubMetrics
from edge_agent.serving.stats import PipelineStats
from protocols.messages import DeviceBirth, DeviceLoad, LoadReport, PipelineLoad, PoolOffer, RouteCounts

INTERVAL_S = 2.0  # the agents' nominal telemetry interval: what their reports say
DEVICE_LOAD = DeviceLoad(cpu_percent=10.0, ram_used_mb=100, ram_total_mb=1000, gpu_source="unavailable")
# device -> (pipeline, model, pool, requests per second, rows per request cycle)
LOAD = {
    "dev-1": [("detect", "tiny-cnn", "gpu-a", 20.0, (1, 2, 3))],
    "dev-2": [("detect", "tiny-cnn", "gpu-a", 30.0, (4,)), ("shelf", "tiny-cnn", "gpu-b", 10.0, (2, 6))],
    "dev-3": [("text", "tiny-mlp", "gpu-b", 15.0, (1,))],
}


def report(
    device_id: str, loads: tuple[PipelineLoad, ...], *, seq: int = 1, interval_s: float = INTERVAL_S
) -> LoadReport:
    return LoadReport(
        device_id=device_id,
        boot_id="boot-1",
        seq=seq,
        sent_at=time.time(),
        interval_s=interval_s,
        pipelines=loads,
        device=DEVICE_LOAD,
    )


async def offer_load(
    stats: PipelineStats,
    *,
    pipeline: str,
    pool: str,
    rate: float,
    rows: tuple[int, ...],
    truth: dict[tuple[str, str], list[float]],
    model: str,
) -> None:
    """Send `rate` requests/s to `pool` for one nominal interval, as the router does (record_offer per request);
    the truth is what was really offered per second of real time."""
    start = time.monotonic()
    sent = sent_rows = 0
    while time.monotonic() - start < INTERVAL_S:
        n = rows[sent % len(rows)]
        stats.record_offer(pipeline, pool, n)
        sent, sent_rows = sent + 1, sent_rows + n
        await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    elapsed = time.monotonic() - start
    fig = truth.setdefault((pool, model), [0.0, 0.0])
    fig[0] += sent / elapsed
    fig[1] += sent_rows / elapsed


@pytest_asyncio.fixture
async def demand_hub(hub_data_dir: Path, db_url: str, hub_broker: Mosquitto) -> AsyncIterator[Hub]:
    """A hub ingesting from the mTLS broker."""
    config = hub_config(hub_data_dir, db_url, brokers=(f"mqtts://127.0.0.1:{hub_broker.port}",), batch_max_delay_ms=50)
    async with serve_hub(config) as hub:
        assert hub.ingest is not None
        await hub.ingest.wait_connected(10)
        yield hub


async def scrape(api: Api) -> dict[tuple[str, str, str], float]:
    async with aiohttp.ClientSession() as s, s.get(f"{api.url}/metrics", ssl=client_ssl(api.cafile)) as r:
        assert r.status == 200
        text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name in (POOL_OFFERED_REQUESTS, POOL_OFFERED_ROWS):
            for sample in family.samples:
                out[(family.name, sample.labels["pool"], sample.labels["model"])] = sample.value
    return out


@pytest.mark.slow
async def test_exported_pool_demand_equals_the_fleets_offered_overflow(
    demand_hub: Hub,
    hub_broker: Mosquitto,
    tmp_path: Path,
) -> None:
    hub = demand_hub
    api = Api(hub)
    token = (await api.claim(uses=5))["token"]
    clients = {d: await _device(api, token, d, hub_broker, tmp_path) for d in LOAD}
    try:
        stats = {d: PipelineStats() for d in LOAD}
        for d, loads in LOAD.items():
            for pipeline, model, _, _, _ in loads:
                stats[d].register(pipeline, model=model, priority="best_effort")
        for d, client in clients.items():  # birth and a first, idle report (it shows no share yet)
            await asyncio.to_thread(client.publish, TOPICS.state(d), birth(d), retain=True)
            payload = report(d, stats[d].snapshot(INTERVAL_S)).model_dump_json().encode()
            await asyncio.to_thread(client.publish, TOPICS.telemetry(d), payload)
        await until(lambda: all((hub.fleet.devices[d].last_seq or 0) == 1 for d in LOAD), what="first reports")
        assert await scrape(api) == {}
        truth: dict[tuple[str, str], list[float]] = {}
        await asyncio.gather(
            *(
                offer_load(stats[d], pipeline=pipeline, pool=pool, rate=rate, rows=rows, truth=truth, model=model)
                for d, loads in LOAD.items()
                for pipeline, model, pool, rate, rows in loads
            )
        )
        for d, client in clients.items():
            payload = report(d, stats[d].snapshot(INTERVAL_S), seq=2).model_dump_json().encode()
            await asyncio.to_thread(client.publish, TOPICS.telemetry(d), payload)
        await until(lambda: all((hub.fleet.devices[d].last_seq or 0) == 2 for d in LOAD), what="loaded reports")
        exported = await scrape(api)
        assert {(p, m) for (_, p, m) in exported} == set(truth)
        for (pool, model), (rps, rows_ps) in sorted(truth.items()):
            got_rps = exported[(POOL_OFFERED_REQUESTS, pool, model)]
            got_rows = exported[(POOL_OFFERED_ROWS, pool, model)]
            print(
                f"pool demand {pool}/{model}: exported {got_rps:.3f} req/s vs offered {rps:.3f} "
                f"({(got_rps / rps - 1) * 100:+.2f} %), {got_rows:.3f} rows/s vs {rows_ps:.3f} "
                f"({(got_rows / rows_ps - 1) * 100:+.2f} %)"
            )
            assert abs(got_rps - rps) <= 0.05 * rps
            assert abs(got_rows - rows_ps) <= 0.05 * rows_ps

        # dev-3 is lost (its will): its overflow is no longer demand; dev-2's share of gpu-b stays.
        await asyncio.to_thread(clients["dev-3"].publish, TOPICS.state("dev-3"), will("dev-3"), retain=True)
        await until(lambda: hub.fleet.devices["dev-3"].online is False, what="dev-3 offline")
        after = await scrape(api)
        assert (POOL_OFFERED_REQUESTS, "gpu-b", "tiny-mlp") not in after
        assert (
            after[(POOL_OFFERED_REQUESTS, "gpu-b", "tiny-cnn")]
            == exported[(POOL_OFFERED_REQUESTS, "gpu-b", "tiny-cnn")]
        )
    finally:
        for client in clients.values():
            await asyncio.to_thread(client.close)


def _offering(seq: int, *, boot: str = "boot-1", interval_s: float = 10.0, requests: int = 20) -> LoadReport:
    load = PipelineLoad(
        name="p",
        model="m",
        priority="best_effort",
        requests_per_s=requests / interval_s,
        routes=RouteCounts(cloud=requests),
        offered=(PoolOffer(pool="gpu", requests=requests, rows=requests * 2),),
    )
    return report("d", (load,), seq=seq, interval_s=interval_s).model_copy(update={"boot_id": boot})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fleet(boot: str = "boot-1") -> LiveFleet:
    fleet = LiveFleet()
    fleet.set_status("d", "active")
    live = fleet.devices["d"]
    live.online, live.birth = True, DeviceBirth.model_validate_json(birth("d", boot))
    return fleet


def test_replicas_splitting_reports_round_robin_sum_to_the_devices_demand() -> None:
    clock = Clock()
    single = PoolDemand(_fleet(), clock)
    replicas = [PoolDemand(_fleet(), clock) for _ in range(3)]
    for seq in range(1, 13):  # 20 requests / 10 s = 2 req/s, 4 rows/s; replicas get every third report
        single.on_report("d", _offering(seq))
        replicas[seq % 3].on_report("d", _offering(seq))
        clock.now += 10.0
    clock.now -= 9.0
    assert single.figures() == {("gpu", "m"): (2.0, 4.0)}
    figures = [r.figures()[("gpu", "m")] for r in replicas]
    assert all(f == pytest.approx((2.0 / 3, 4.0 / 3)) for f in figures)  # each counts its third
    assert sum(f[0] for f in figures) == pytest.approx(2.0) and sum(f[1] for f in figures) == pytest.approx(4.0)


def test_a_broker_round_robin_over_devices_and_replicas_sums_to_the_fleets_demand() -> None:
    """Three devices reporting in turn, two replicas taking messages in turn: each device alternates."""
    clock = Clock()
    fleets = [LiveFleet(), LiveFleet()]
    for fleet in fleets:
        for d in ("a", "b", "c"):
            fleet.set_status(d, "active")
            fleet.devices[d].online = True
    replicas = [PoolDemand(fleet, clock) for fleet in fleets]
    turn = 0
    for seq in range(1, 40):
        for n, d in enumerate(("a", "b", "c")):
            offer = _offering(seq, requests=10 * (n + 1)).model_copy(update={"device_id": d})
            replicas[turn % 2].on_report(d, offer)
            turn += 1 + (seq % 7 == 0)  # now and then the order slips (a reconnect, another client's message)
        clock.now += 10.0
    total = [sum(r.figures()[("gpu", "m")][i] for r in replicas) for i in (0, 1)]
    assert total == pytest.approx([6.0, 12.0], rel=0.05)  # (10 + 20 + 30) / 10 s, rows twice that


def test_first_stale_offline_revoked_and_restarted_devices_drop_out() -> None:
    clock = Clock()
    fleet = _fleet()
    demand = PoolDemand(fleet, clock)
    fleet.notify("telemetry", "d", _offering(1))  # it listens to the fleet's accepted reports
    assert demand.figures() == {}  # the first report shows no share yet
    fleet.notify("telemetry", "d", _offering(2))
    assert demand.figures() == {("gpu", "m"): (2.0, 4.0)}
    clock.now += STALE_INTERVALS * 10.0 - 0.1
    assert demand.figures() == {("gpu", "m"): (2.0, 4.0)}
    clock.now += 0.2  # stopped reporting for 3 intervals
    assert demand.figures() == {}
    fleet.notify("telemetry", "d", _offering(3))
    assert demand.figures() == {("gpu", "m"): (2.0, 4.0)}
    fleet.devices["d"].online = False
    assert demand.figures() == {}
    fleet.devices["d"].online = True
    fleet.devices["d"].birth = DeviceBirth.model_validate_json(birth("d", "boot-2"))
    assert demand.figures() == {}  # restarted: the report is from the old boot
    fleet.notify("telemetry", "d", _offering(1, boot="boot-2"))
    assert demand.figures() == {}  # a new boot's first report: no share yet
    fleet.notify("telemetry", "d", _offering(2, boot="boot-2", requests=40))
    assert demand.figures() == {("gpu", "m"): (4.0, 8.0)}
    fleet.set_status("d", "revoked")
    assert demand.figures() == {}


def test_metric_names_and_empty_fleet() -> None:
    metrics = HubMetrics()
    figures = {("gpu-a", "tiny-cnn"): (12.5, 40.0)}
    metrics.pool_demand(lambda: figures)
    text = metrics.render().decode()
    assert f'{POOL_OFFERED_REQUESTS}{{model="tiny-cnn",pool="gpu-a"}} 12.5' in text
    assert f'{POOL_OFFERED_ROWS}{{model="tiny-cnn",pool="gpu-a"}} 40.0' in text
    figures.clear()
    assert f"# TYPE {POOL_OFFERED_REQUESTS} gauge" in metrics.render().decode()
    assert f"{POOL_OFFERED_REQUESTS}{{" not in metrics.render().decode()
