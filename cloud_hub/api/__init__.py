"""The hub's HTTPS API: provisioning (claim token) and the operator API (bearer token)."""

from cloud_hub.api.app import build_app
from cloud_hub.api.keys import HUB_KEY, HubCore

__all__ = ["HUB_KEY", "HubCore", "build_app"]
