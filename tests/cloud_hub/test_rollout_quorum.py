"""Issue 15 item 6: one device cannot roll the fleet back (quorum gates), against a real hub and broker.

Four devices provisioned by claim, each a paho client with its own certificate answering its desired
state (test_rollout_mqtt.SimDevice); one of them lies and reports `failed` for the new version. With the
default quorum (min_failed_devices = 2) that is the device's own failure: the rollout completes, the
liar is reported failed, and the honest devices keep the new version (their last desired state is v2).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import test_rollout_mqtt
from devices_support import TOPICS, DeviceClient, birth, provision, write_identity
from rig import Mosquitto
from test_hub_api import Api
from test_hub_ingest import until
from test_registry import push, trust_zoo, zoo_tar
from test_rollout_mqtt import SimDevice, _wait_state

from cloud_hub.app import Hub
from protocols.messages import DesiredState, ModelReport, ReportedState

pytestmark = pytest.mark.slow

LIAR = "dev-2"
mqtt_hub = test_rollout_mqtt.mqtt_hub  # the fixture: a real hub ingesting from the production broker


class LyingDevice(SimDevice):
    """Reports every desired version as failed (a compromised or broken device)."""

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        state = DesiredState.model_validate_json(message.payload)
        with self.lock:
            self.desired.append(state)
        reports = tuple(
            ModelReport(name=m.name, version=m.version, state="failed", error="warm-up failed (lying)")
            for m in state.models
        )
        reported = ReportedState(
            device_id=self.device_id, revision=state.revision, updated_at=time.time(), models=reports, converged=False
        )
        self.client.client.publish(TOPICS.reported(self.device_id), reported.model_dump_json(), qos=1, retain=True)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_one_lying_device_does_not_roll_the_fleet_back(
    mqtt_hub: Hub, hub_broker: Mosquitto, tmp_path: Path
) -> None:
    hub = mqtt_hub
    api = Api(hub)
    await trust_zoo(api)
    for version in ("1", "2"):
        assert (await push(api, zoo_tar(tmp_path, "tiny-cnn", version)))[0] == 201
    token = (await api.claim(uses=4, labels={"site": "plant-a"}))["token"]
    sims: list[SimDevice] = []
    try:
        for n in range(4):
            device_id = f"dev-{n}"
            status, body, key = await provision(api.url, api.cafile, token, device_id=device_id)
            assert status == 200
            cert = write_identity(tmp_path / device_id, key, body["certificate_pem"])
            client = await asyncio.to_thread(DeviceClient, hub_broker, api.cafile, cert, device_id)
            ctx = ssl.create_default_context(cafile=str(api.cafile))
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
            sims.append((LyingDevice if device_id == LIAR else SimDevice)(client, device_id, ctx))
            await asyncio.to_thread(client.publish, TOPICS.state(device_id), birth(device_id), retain=True)
        await until(lambda: all((d := hub.fleet.get(f"dev-{n}")) and d.online for n in range(4)), what="births")

        body = {"model": "tiny-cnn", "version": "2", "selector": {"site": "plant-a"}, "canary": 1,
                "waves_pct": [100], "bake_s": 0.3}  # fmt: skip
        status, created = await api.call("POST", "/api/v1/rollouts", body)
        assert status == 201, created
        done = await _wait_state(api, created["rollout"]["id"], "completed")
        statuses = {d["device_id"]: d["status"] for d in done["devices"]}
        print(f"quorum: rollout {done['state']}, devices {statuses}, reason {done['reason']}")
        assert statuses == {"dev-0": "active", "dev-1": "active", LIAR: "failed", "dev-3": "active"}
        assert "lying" in next(d["error"] for d in done["devices"] if d["device_id"] == LIAR)
        for sim in sims:  # nobody was sent back to v1
            assert [s.models[0].version for s in sim.desired] == ["2"], sim.device_id
    finally:
        for sim in sims:
            await asyncio.to_thread(sim.client.close)
