"""Typed keys of the dashboard's sub-application and requests, and its settings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from cloud_hub.dashboard.cache import TtlCache
from cloud_hub.dashboard.sessions import Session, SessionStore
from cloud_hub.fleet.ratelimit import FailureLimiter
from cloud_hub.store.fleetview import PipelineTotal


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """How the dashboard pages behave."""

    stream_interval_s: float = 2.0  # how often a live page re-renders its regions (sent only when changed)
    keepalive_s: float = 15.0  # comment line on a quiet stream, so proxies keep it open
    page_size: int = 100  # devices per page (fleet, rollout)
    totals_cache_s: float = 2.0  # how long the fleet's load per pipeline is reused (ingest's load interval)


SESSIONS_KEY: web.AppKey[SessionStore] = web.AppKey("dashboard_sessions", SessionStore)
LIMITER_KEY: web.AppKey[FailureLimiter] = web.AppKey("dashboard_login_limiter", FailureLimiter)
SETTINGS_KEY: web.AppKey[DashboardSettings] = web.AppKey("dashboard_settings", DashboardSettings)
STOP_KEY: web.AppKey[asyncio.Event] = web.AppKey("dashboard_stop", asyncio.Event)
TOTALS_KEY: web.AppKey[TtlCache[list[PipelineTotal]]] = web.AppKey("dashboard_totals", TtlCache)
SESSION_KEY: web.RequestKey[Session] = web.RequestKey("dashboard_session", Session)
