"""`cloud-hub devices drift` (a real subprocess) and the drift API against a real hub, fed load reports made
by the agent's own stats code from real tiny-cnn inferences (tests/cloud_hub/test_drift.py)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from test_drift import Device
from test_hub_api import Api
from test_rollout_cli import cli, cli_json

from cloud_hub.app import Hub
from models.zoo import zoo_package_path

pytestmark = pytest.mark.slow


async def test_devices_drift_cli_and_api(hub: Hub, hub_data_dir: Path) -> None:
    session = ort.InferenceSession(
        str(zoo_package_path("tiny-cnn", "2") / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    device = Device(session, seed=3)
    _, out, _ = await cli(hub_data_dir, "devices", "drift")
    assert "no drift profiles yet" in out
    for _ in range(4):  # three for the reference window, one scored
        hub.fleet.notify("telemetry", "dev-1", device.interval())
    (row,) = await cli_json(hub_data_dir, "devices", "drift")
    assert row["reference"] == "window" and row["psi"] < 0.2 and not row["drifted"]
    hub.fleet.notify("telemetry", "dev-1", device.interval(shift=3.0))
    _, out, _ = await cli(hub_data_dir, "devices", "drift", "--device", "dev-1")
    assert "dev-1  obstacles  tiny-cnn:2" in out and "DRIFT" in out
    api = Api(hub)
    status, body = await api.call("GET", "/api/v1/drift?device=other")
    assert status == 200 and body == {"drift": [], "threshold": 0.2}
    metrics = hub.metrics.render().decode()
    assert 'edgefleet_hub_drift_active{device="dev-1",pipeline="obstacles",version="2"} 1.0' in metrics
    done = await cli_json(hub_data_dir, "devices", "drift", "--rebaseline", "dev-1", "--pipeline", "obstacles")
    assert done == {"device_id": "dev-1", "rebaselined": 1}
    (row,) = await cli_json(hub_data_dir, "devices", "drift")
    assert row["reference"] == "building" and not row["drifted"]
