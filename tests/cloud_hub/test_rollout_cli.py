"""The operator CLI (`cloud-hub models ...`, `cloud-hub rollouts ...`) as a real subprocess against a real hub."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from devices_support import provision
from test_hub_api import Api

from cloud_hub.app import Hub
from models.zoo import ZOO_PUBLIC_KEY_FILE, zoo_package_path

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


async def cli(data_dir: Path, *args: str, ok: bool = True) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cloud_hub", "--data-dir", str(data_dir), *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if ok:
        assert proc.returncode == 0, f"{args}: {err.decode()}"
    return proc.returncode or 0, out.decode(), err.decode()


async def cli_json(data_dir: Path, *args: str) -> Any:
    return json.loads((await cli(data_dir, *args, "--json"))[1])


async def test_models_and_rollouts_through_the_cli(hub: Hub, hub_data_dir: Path) -> None:
    api = Api(hub)
    token = (await api.claim(uses=2, labels={"site": "plant-a"}))["token"]
    for device_id in ("dev-a", "dev-b"):
        assert (await provision(api.url, api.cafile, token, device_id=device_id))[0] == 200

    code, _, err = await cli(hub_data_dir, "models", "push", str(zoo_package_path("tiny-cnn", "2")), ok=False)
    assert code == 1 and "package rejected: manifest signed by untrusted key" in err
    trusted = await cli_json(hub_data_dir, "models", "trust-key", str(ZOO_PUBLIC_KEY_FILE))
    pushed = await cli_json(hub_data_dir, "models", "push", str(zoo_package_path("tiny-cnn", "2")))
    assert pushed["created"] is True and pushed["model"]["publisher_key_id"] == trusted["key_id"]
    _, out, _ = await cli(hub_data_dir, "models", "push", str(zoo_package_path("tiny-cnn", "2")))
    assert "already there" in out
    listed = await cli_json(hub_data_dir, "models", "list")
    assert [(m["name"], m["version"]) for m in listed] == [("tiny-cnn", "2")]
    _, table, _ = await cli(hub_data_dir, "models", "list")
    assert "tiny-cnn" in table and pushed["model"]["sha256"][:16] in table

    created = await cli_json(
        hub_data_dir, "rollouts", "create", "--model", "tiny-cnn", "--version", "2", "--selector", "site=plant-a",
        "--canary", "1", "--waves", "50%,100%", "--bake", "30s", "--max-failures", "5%", "--max-p99-increase", "50%",
        "--deadline", "1h", "--apply", "window", "--window", "22:00-04:00",
    )  # fmt: skip
    assert created["devices_total"] == 2 and created["waves"] == 2
    spec = created["spec"]
    assert spec["waves_pct"] == [50.0, 100.0] and spec["bake_s"] == 30 and spec["deadline_s"] == 3600
    assert spec["apply"]["mode"] == "window" and spec["apply"]["window_start_utc"] == "22:00"
    rollout_id = created["id"]
    await hub.orchestrator.tick()
    detail = await cli_json(hub_data_dir, "rollouts", "get", rollout_id)
    # dev-a got its desired state (it is offline, so the hub shows it pending as soon as it notices).
    statuses = [(d["device_id"], d["status"]) for d in detail["devices"]]
    assert statuses in ([("dev-a", "updating"), ("dev-b", "waiting")], [("dev-a", "pending"), ("dev-b", "waiting")])
    desired = await hub.desired.current("dev-a")
    assert desired is not None and desired.apply.mode == "window" and desired.rollout_id == rollout_id
    _, view, _ = await cli(hub_data_dir, "rollouts", "get", rollout_id)
    assert "dev-a" in view and "canary" in view and "p99 +50%" in view

    assert (await cli_json(hub_data_dir, "rollouts", "pause", rollout_id))["state"] == "paused"
    assert (await cli_json(hub_data_dir, "rollouts", "resume", rollout_id))["state"] == "running"
    aborted = await cli_json(hub_data_dir, "rollouts", "abort", rollout_id, "--rollback")
    assert aborted["state"] == "aborted" and aborted["counts"] == {"rolled_back": 1, "waiting": 1}
    reverted = await hub.desired.current("dev-a")
    assert reverted is not None and reverted.revision == 2 and reverted.models == ()
    code, _, err = await cli(hub_data_dir, "rollouts", "pause", rollout_id, ok=False)
    assert code == 1 and "409" in err
    listed = await cli_json(hub_data_dir, "rollouts", "list")
    assert [(r["id"], r["state"]) for r in listed] == [(rollout_id, "aborted")]
    code, _, err = await cli(hub_data_dir, "rollouts", "create", "--model", "nope", "--version", "1", ok=False)
    assert code == 1 and "no model 'nope'" in err
