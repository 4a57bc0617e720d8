"""End-to-end telemetry acks on the agent (issue 14): reports stay on disk until the hub names them, are
resent from the oldest when no ack comes, cost one probe per wait while the hub is away, and a full spool
drops the oldest, counted and exported."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fleet_support import HubWatcher, fake_probe_root, make_link
from prometheus_client import CollectorRegistry, generate_latest
from rig import MosquittoFactory, TestPKI

from edge_agent.fleet.device_load import ProbeLoadSource
from edge_agent.fleet.mqtt_link import DeviceLink, LinkSettings
from edge_agent.fleet.outbox import Outbox
from edge_agent.fleet.seq import SequenceCounter
from edge_agent.fleet.spool import Spool
from edge_agent.fleet.telemetry import TelemetryReporter
from edge_agent.fleet.telemetry_metrics import TelemetryCollector
from edge_agent.serving.stats import PipelineStats
from protocols.messages import LoadReport, TelemetryAck
from protocols.topics import Topics

T = Topics()


def _payload(boot: str, seq: int) -> bytes:
    return f'{{"boot_id": "{boot}", "seq": {seq}}}'.encode()


def test_outbox_acks_by_ranges_follows_spool_drops_and_reloads(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_records=4)
    box = Outbox(spool)
    keys = [box.add(_payload("b1", seq), "b1", seq) for seq in range(3)] + [box.add(_payload("b2", 0), "b2", 0)]
    assert len(box) == 4
    assert box.ack("b1", ((0, 0), (2, 5))) == [keys[0], keys[2]]  # seq 1 not named; b2 is another boot
    assert box.ack("b9", ((0, 99),)) == [] and len(box) == 2
    for key in (keys[0], keys[2]):
        spool.remove(key)
    for seq in range(3, 7):  # the spool holds 4: the oldest (b1/1, b2/0) are dropped, acknowledged or not
        box.add(_payload("b1", seq), "b1", seq)
    assert spool.dropped == 2 and len(box) == 4
    oldest = box.oldest()
    assert oldest is not None and (oldest.boot_id, oldest.seq) == ("b1", 3)
    reopened = Outbox(Spool(tmp_path / "s", max_records=4))  # an agent restart: the index comes from disk
    assert [(p.boot_id, p.seq) for p in reopened.unsent()] == [("b1", s) for s in range(3, 7)]


def _reporter(link: DeviceLink, tmp_path: Path, interval_s: float, **kw: object) -> TelemetryReporter:
    stats = PipelineStats()
    stats.register("det", model="tiny-cnn")
    return TelemetryReporter(
        link,
        stats=stats,
        load=ProbeLoadSource(fake_probe_root(tmp_path / "root")),
        spool=kw.pop("spool") if "spool" in kw else Spool(tmp_path / "spool"),  # type: ignore[arg-type]
        seq=SequenceCounter(tmp_path / "seq"),
        interval_s=interval_s,
        **kw,  # type: ignore[arg-type]
    )


async def _until(cond: object, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():  # type: ignore[operator]
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_hub_away_costs_one_probe_per_wait_then_everything_arrives_in_order(
    mosquitto_factory: MosquittoFactory, mqtt_pki: TestPKI, tmp_path: Path
) -> None:
    broker = mosquitto_factory("mtls")
    hub = await HubWatcher(broker, mqtt_pki, [T.telemetry("dev-p")], ack_telemetry=False).ready()
    link = make_link(broker, mqtt_pki, "dev-p")
    reporter = _reporter(link, tmp_path, 0.2, resend_after_s=0.4, max_resend_s=1.6)
    try:
        async with link, reporter:
            await link.wait_connected(10)
            await asyncio.sleep(4.0)  # the hub is "away": nothing is acknowledged
            away = len(hub.received(T.telemetry("dev-p")))
            made = reporter.spooled
            # Probes only: 1 at first, then one per wait (0.4, 0.8, 1.6, 1.6 s...), never the whole backlog.
            assert made >= 12 and away <= reporter.timeouts + 1 <= 8, (made, away, reporter.timeouts)
            assert reporter.unacked == made and reporter.acked == 0
            # A garbage ack and one for another device are counted and change nothing.
            hub.client.publish(T.telemetry_ack("dev-p"), b"{oops", qos=1)
            other = TelemetryAck(device_id="dev-q", boot_id=reporter.boot_id, ranges=((0, 10**6),), sent_at=0)
            hub.client.publish(T.telemetry_ack("dev-p"), other.model_dump_json(), qos=1)
            await _until(lambda: reporter.bad_acks == 2, 10, "bad acks counted")
            assert reporter.acked == 0
            hub.acking = True  # the hub is back: the next probe is acknowledged, then the backlog follows
            await _until(lambda: reporter.unacked <= 1 and reporter.acked >= made, 15, "the backlog acknowledged")
            await _until(lambda: len(list((tmp_path / "spool").iterdir())) <= 1, 5, "acked files deleted")
    finally:
        hub.close()
    seqs = [LoadReport.model_validate_json(m.payload).seq for m in hub.received(T.telemetry("dev-p"))]
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == list(range(first_seen[0], first_seen[-1] + 1)), "a report was lost or arrived out of order"
    assert first_seen[0] == 0


async def test_full_spool_drops_oldest_counts_and_exports_it(tmp_path: Path) -> None:
    unreachable = LinkSettings(device_id="dev-u", host="127.0.0.1", port=1, ssl_context=None)
    link = DeviceLink(unreachable, lambda: None)  # type: ignore[arg-type,return-value]  # never connects
    reporter = _reporter(link, tmp_path, 10.0, spool=Spool(tmp_path / "spool", max_records=5))
    for _ in range(8):
        await reporter.report_once()
    assert reporter.spool.dropped == 3 and reporter.unacked == 5 and len(reporter.spool) == 5
    oldest = reporter.outbox.oldest()
    assert oldest is not None and oldest.seq == 3
    registry = CollectorRegistry()
    registry.register(TelemetryCollector(reporter))
    text = generate_latest(registry).decode()
    assert 'edgefleet_fleet_telemetry_reports_total{outcome="dropped"} 3.0' in text
    assert 'edgefleet_fleet_telemetry_reports_total{outcome="spooled"} 8.0' in text
    assert "edgefleet_fleet_telemetry_unacked 5.0" in text


async def test_reports_survive_a_restart_until_acked(
    mosquitto_factory: MosquittoFactory, mqtt_pki: TestPKI, tmp_path: Path
) -> None:
    """Sent and PUBACKed but never acknowledged: an agent restart sends them again (old boot id kept)."""
    broker = mosquitto_factory("mtls")
    hub = await HubWatcher(broker, mqtt_pki, [T.telemetry("dev-s")]).ready()
    try:
        link = make_link(broker, mqtt_pki, "dev-s")
        first = _reporter(link, tmp_path, 0.2, resend_after_s=30.0)
        async with link, first:
            await link.wait_connected(10)
            await _until(lambda: first.sent >= 1 and first.spooled >= 3, 10, "reports made")
        boot = first.boot_id
        assert first.unacked == first.spooled
        hub.acking = True
        link = make_link(broker, mqtt_pki, "dev-s")
        second = _reporter(link, tmp_path, 0.2)
        async with link, second:
            await link.wait_connected(10)
            await _until(lambda: second.acked > first.spooled, 15, "old reports acked")
    finally:
        hub.close()
    boots = {LoadReport.model_validate_json(m.payload).boot_id for m in hub.received(T.telemetry("dev-s"))}
    assert boot in boots and second.boot_id in boots
