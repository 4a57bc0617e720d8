"""Typed keys of the aiohttp application, and what its handlers need of the hub core."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from cloud_hub.fleet.claims import ClaimService
from cloud_hub.fleet.devices import DeviceService
from cloud_hub.fleet.drift import DriftMonitor
from cloud_hub.fleet.live import LiveFleet
from cloud_hub.fleet.provisioning import Provisioner
from cloud_hub.fleet.ratelimit import FailureLimiter
from cloud_hub.metrics import HubMetrics
from cloud_hub.pki import HubIdentity
from cloud_hub.registry import ModelRegistry
from cloud_hub.rollouts.desired import DesiredWriter
from cloud_hub.rollouts.service import RolloutService
from cloud_hub.store import Store


class HubCore(Protocol):
    """The services the HTTP handlers call (`cloud_hub.app.Hub` provides them; the API never imports it)."""

    url: str
    identity: HubIdentity
    metrics: HubMetrics
    store: Store
    claims: ClaimService
    devices: DeviceService
    provisioner: Provisioner
    claim_limiter: FailureLimiter
    registry: ModelRegistry
    desired: DesiredWriter
    rollouts: RolloutService
    drift: DriftMonitor
    fleet: LiveFleet  # this replica's live view (the dashboard's queue depths and device events)

    def check_token(self, token: str) -> bool:
        """True if `token` is a known operator API token."""
        ...


HUB_KEY: web.AppKey[HubCore] = web.AppKey("hub")
