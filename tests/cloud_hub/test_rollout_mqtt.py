"""A rollout end to end on the hub side: real mosquitto (production mTLS config + ACL), real hub with ingest,
three simulated devices (paho clients with their own certificates) that download the artifact over HTTPS
with their certificate, check its sha256 and report `active`."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from devices_support import TOPICS, DeviceClient, birth, provision, write_identity
from hub_support import hub_config
from rig import Mosquitto
from test_hub_api import Api
from test_hub_ingest import until
from test_registry import push, trust_zoo, zoo_tar

from cloud_hub.app import Hub, serve_hub
from protocols.messages import DesiredState, ModelReport, ReportedState

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture
async def mqtt_hub(hub_data_dir: Path, db_url: str, hub_broker: Mosquitto) -> AsyncIterator[Hub]:
    config = hub_config(hub_data_dir, db_url, brokers=(f"mqtts://127.0.0.1:{hub_broker.port}",), batch_max_delay_ms=50)
    async with serve_hub(config) as hub:
        assert hub.ingest is not None
        await hub.ingest.wait_connected(10)
        yield hub


class SimDevice:
    """Answers every desired state: download with its certificate, check sha256, report active (retained)."""

    def __init__(self, client: DeviceClient, device_id: str, ctx: ssl.SSLContext) -> None:
        self.client, self.device_id, self.ctx = client, device_id, ctx
        self.desired: list[DesiredState] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        client.client.on_message = self._on_message
        client.client.subscribe(TOPICS.desired(device_id), qos=1)

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        state = DesiredState.model_validate_json(message.payload)
        with self.lock:
            self.desired.append(state)
        reports = []
        for m in state.models:
            with urllib.request.urlopen(m.url, context=self.ctx, timeout=10) as resp:
                body = resp.read()
            if hashlib.sha256(body).hexdigest() != m.sha256 or len(body) != m.size:
                self.errors.append(f"{m.name} {m.version}: bad download")
            reports.append(ModelReport(name=m.name, version=m.version, state="active", active_version=m.version))
        reported = ReportedState(
            device_id=self.device_id, revision=state.revision, updated_at=time.time(), models=tuple(reports),
            converged=True,
        )  # fmt: skip
        self.client.client.publish(TOPICS.reported(self.device_id), reported.model_dump_json(), qos=1, retain=True)


async def _wait_state(api: Api, rollout_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        _, body = await api.call("GET", f"/api/v1/rollouts/{rollout_id}")
        if body["rollout"]["state"] == state:
            return body["rollout"]  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


async def test_rollout_over_three_devices_completes_with_retained_growing_revisions(
    mqtt_hub: Hub, hub_broker: Mosquitto, tmp_path: Path
) -> None:
    hub = mqtt_hub
    api = Api(hub)
    await trust_zoo(api)
    for version in ("1", "2"):
        assert (await push(api, zoo_tar(tmp_path, "tiny-cnn", version)))[0] == 201
    token = (await api.claim(uses=3, labels={"site": "plant-a"}))["token"]
    sims: list[SimDevice] = []
    certs = {}
    try:
        for n in range(3):
            device_id = f"dev-{n}"
            status, body, key = await provision(api.url, api.cafile, token, device_id=device_id)
            assert status == 200
            certs[device_id] = cert = write_identity(tmp_path / device_id, key, body["certificate_pem"])
            client = await asyncio.to_thread(DeviceClient, hub_broker, api.cafile, cert, device_id)
            ctx = ssl.create_default_context(cafile=str(api.cafile))
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
            sims.append(SimDevice(client, device_id, ctx))
            await asyncio.to_thread(client.publish, TOPICS.state(device_id), birth(device_id), retain=True)
        await until(lambda: all((d := hub.fleet.get(f"dev-{n}")) and d.online for n in range(3)), what="births")

        body = {"model": "tiny-cnn", "version": "2", "selector": {"site": "plant-a"}, "canary": 1,
                "waves_pct": [50, 100], "bake_s": 0.3}  # fmt: skip
        status, created = await api.call("POST", "/api/v1/rollouts", body)
        assert status == 201, created
        rollout_id = created["rollout"]["id"]
        status, conflict = await api.call("POST", "/api/v1/rollouts", body)
        assert status == 409 and "still live" in conflict["error"]
        done = await _wait_state(api, rollout_id, "completed")
        assert [d["status"] for d in done["devices"]] == ["active"] * 3
        assert [d["wave"] for d in done["devices"]] == [0, 1, 2]
        # Waves went in order: the canary's desired state was issued before the others'.
        issued = [s.desired[0].issued_at for s in sims]
        assert issued[0] < issued[1] <= issued[2]

        # A second rollout back to version 1: revision 2 everywhere.
        status, second = await api.call(
            "POST", "/api/v1/rollouts", {**body, "version": "1", "canary": 0, "waves_pct": [100]}
        )
        assert status == 201, second
        await _wait_state(api, second["rollout"]["id"], "completed")
        for sim in sims:
            assert [(s.revision, s.models[0].version) for s in sim.desired] == [(1, "2"), (2, "1")]
            assert sim.errors == []
        _, listed = await api.call("GET", "/api/v1/rollouts")
        assert [r["state"] for r in listed["rollouts"]] == ["completed", "completed"]
    finally:
        for sim in sims:
            # Off the loop: a device thread may be waiting on the hub, which runs on this loop.
            await asyncio.to_thread(sim.client.close)

    # Retained: a device that connects now gets its latest desired state at once.
    again = await asyncio.to_thread(DeviceClient, hub_broker, api.cafile, certs["dev-1"], "dev-1")
    try:
        sim = SimDevice(again, "dev-1", ssl.create_default_context(cafile=str(api.cafile)))
        sim.ctx.load_cert_chain(str(certs["dev-1"][0]), str(certs["dev-1"][1]))
        await until(lambda: len(sim.desired) == 1, what="retained desired")
        assert sim.desired[0].revision == 2
        # Its birth shows no models (as if it lost them): the hub republishes the same revision.
        await asyncio.to_thread(again.publish, TOPICS.state("dev-1"), birth("dev-1", "boot-2"), retain=True)
        await until(lambda: len(sim.desired) == 2, what="republished desired")
        assert sim.desired[1].revision == 2
    finally:
        await asyncio.to_thread(again.close)


async def test_hub_without_ingest_still_publishes_desired_state(
    hub_data_dir: Path, db_url: str, hub_broker: Mosquitto, tmp_path: Path
) -> None:
    config = hub_config(hub_data_dir, db_url, brokers=(f"mqtts://127.0.0.1:{hub_broker.port}",))
    async with serve_hub(config, ingest=False) as hub:
        assert hub.ingest is None
        await hub.broker.wait_connected(10)
        api = Api(hub)
        await trust_zoo(api)
        assert (await push(api, zoo_tar(tmp_path, "tiny-cnn", "1")))[0] == 201
        token = (await api.claim(uses=1))["token"]
        status, body, key = await provision(api.url, api.cafile, token, device_id="dev-0")
        assert status == 200
        cert = write_identity(tmp_path / "dev-0", key, body["certificate_pem"])
        client = await asyncio.to_thread(DeviceClient, hub_broker, api.cafile, cert, "dev-0")
        got: list[DesiredState] = []
        try:
            client.client.on_message = lambda _c, _u, m: got.append(DesiredState.model_validate_json(m.payload))
            client.client.subscribe(TOPICS.desired("dev-0"), qos=1)
            record = await hub.registry.get("tiny-cnn", "1")
            async with hub.store.begin() as conn:
                states = await hub.desired.set_models(conn, {"dev-0": ("tiny-cnn", record.desired(hub.url))})
            assert await hub.desired.publish(states) == 1
            await until(lambda: len(got) == 1, what="desired state from a hub without ingest")
            assert (got[0].revision, [m.version for m in got[0].models]) == (1, ["1"])
        finally:
            await asyncio.to_thread(client.close)
