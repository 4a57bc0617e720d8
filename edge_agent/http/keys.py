"""Typed keys of the aiohttp application's state (read by the handlers of this package only)."""

from __future__ import annotations

from aiohttp import web

from edge_agent.metrics import Metrics
from edge_agent.serving.core import ServingCore

CORE_KEY = web.AppKey("core", ServingCore)
METRICS_KEY = web.AppKey("metrics", Metrics)
