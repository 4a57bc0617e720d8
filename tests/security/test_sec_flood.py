"""Issue 15 item 3: one device's flood does not cost the others their reports, nor fill the database.

A real hub ingesting from the production broker config; line-1 (its own certificate) floods valid load
reports on its own topic as fast as paho can send them (QoS 0), while dock-1 sends its reports (QoS 1).
mosquitto 2.0 has no per-client publish rate limit (its per-client bounds are max_packet_size,
max_queued_messages/bytes and max_inflight_messages, on what it queues, not what a client sends), so
the hub drops a device's reports beyond `telemetry_max_per_s` / `telemetry_burst` before the database
and counts them (dropped{reason="rate_limited"}).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from attack_support import Client, claim, enrol, ingesting_hub, stored_reports
from devices_support import TOPICS, load_report
from rig import Mosquitto

from cloud_hub.pki import HubIdentity

pytestmark = pytest.mark.slow

FLOOD = 20_000
HONEST = 20
RATE, BURST = 10.0, 200


async def test_a_flooding_device_is_cut_to_its_rate_and_the_others_lose_nothing(
    hub_data_dir: Path, hub_identity: HubIdentity, hub_broker: Mosquitto, tmp_path: Path
) -> None:
    overrides = {"telemetry_max_per_s": RATE, "telemetry_burst": BURST}
    async with ingesting_hub(hub_data_dir, tmp_path / "hub.db", hub_broker, **overrides) as hub:
        token = await claim(hub, uses=2)
        certs = {d: await enrol(hub, token, d, tmp_path) for d in ("line-1", "dock-1")}
        cafile = hub.identity.paths.ca_cert
        flooder = Client(hub_broker, cafile, certs["line-1"], "line-1")
        honest = Client(hub_broker, cafile, certs["dock-1"], "dock-1")
        payloads = [load_report("line-1", seq) for seq in range(FLOOD)]
        started = time.monotonic()

        def flood() -> None:
            for payload in payloads:
                flooder.client.publish(TOPICS.telemetry("line-1"), payload, qos=0)

        def steady() -> None:
            for seq in range(HONEST):
                honest.publish(TOPICS.telemetry("dock-1"), load_report("dock-1", seq))
                time.sleep(0.05)

        await asyncio.gather(asyncio.to_thread(flood), asyncio.to_thread(steady))
        stored_honest = 0
        for _ in range(200):
            await asyncio.sleep(0.05)
            stored_honest = await stored_reports(hub, "dock-1")
            if stored_honest == HONEST and hub.metrics.dropped_count("rate_limited") > 0:
                break
        await asyncio.sleep(1.0)  # what of the flood is still in flight lands (or is dropped) meanwhile
        elapsed = time.monotonic() - started
        stored_flood = await stored_reports(hub, "line-1")
        dropped = hub.metrics.dropped_count("rate_limited")
        print(f"flood: line-1 sent {FLOOD} in the run ({elapsed:.1f} s), {stored_flood} stored, {dropped:.0f} "
              f"dropped rate_limited; dock-1 {stored_honest} of {HONEST} stored")  # fmt: skip
        assert stored_honest == HONEST
        assert stored_flood <= BURST + RATE * elapsed + 1
        assert dropped > 0
        flooder.close()
        honest.close()
