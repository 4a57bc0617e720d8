"""Helpers of the hub's tests that test modules import by name (conftest.py is not importable by name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rig import free_port

from cloud_hub.app import Hub
from cloud_hub.config import HubConfig


def hub_config(data_dir: Path, db_url: str | None = None, **overrides: Any) -> HubConfig:
    """A config on a free loopback port; `broker_authz = "acl"` unless told, as the rig's brokers
    (`Mosquitto`, acl_file unless `authz="dynsec"`) that these tests start."""
    values: dict[str, Any] = {
        "data_dir": data_dir, "database_url": db_url, "port": free_port(), "broker_authz": "acl", **overrides
    }  # fmt: skip
    return HubConfig(**values)


async def give_desired(hub: Hub, device_id: str, name: str, version: str) -> None:
    """Write a desired state for `device_id` naming the model version (what a rollout does): since issue 15
    a device may download only the artifacts its desired state names."""
    record = await hub.registry.get(name, version)
    async with hub.store.begin() as conn:
        await hub.desired.set_models(conn, {device_id: (name, record.desired(hub.url))})
