"""Typed keys of the aiohttp application's and requests' state (read by the handlers of this package only)."""

from __future__ import annotations

from aiohttp import web

from edge_agent.http.intake import BodyReader
from edge_agent.metrics import Metrics
from edge_agent.serving.core import ServingCore

CORE_KEY = web.AppKey("core", ServingCore)
METRICS_KEY = web.AppKey("metrics", Metrics)
INTAKE_KEY = web.AppKey("intake", BodyReader)
# Loop time (time.monotonic) at which the event loop read the request's first byte (set by listener.py).
ARRIVAL_KEY = web.RequestKey("arrival", float)
