"""The hub's HTTPS API: provisioning (claim token) and the operator API (bearer token)."""

from cloud_hub.api.app import HUB_KEY, build_app, serve_hub

__all__ = ["HUB_KEY", "build_app", "serve_hub"]
