"""Typed keys of the aiohttp application's state."""

from __future__ import annotations

import asyncio

from aiohttp import web

from edge_agent.config import AgentConfig
from edge_agent.metrics import Metrics
from edge_agent.serving import ServingCore

CONFIG_KEY = web.AppKey("config", AgentConfig)
CORE_KEY = web.AppKey("core", ServingCore)
METRICS_KEY = web.AppKey("metrics", Metrics)
STARTUP_KEY = web.AppKey("startup", asyncio.Task[None])
