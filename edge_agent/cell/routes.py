"""The cell's control endpoints, read by the main process: per-pipeline load for telemetry, and whether safety
traffic is active (the reconciler's policy gate). They sit behind the same token as every other route."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from edge_agent.serving.core import ServingCore

__all__ = ["ACTIVITY_PATH", "STATS_PATH", "cell_routes"]

STATS_PATH = "/edgefleet/cell/stats"
ACTIVITY_PATH = "/edgefleet/cell/activity"


def cell_routes(core: ServingCore, activity: Callable[[], tuple[int, bool]]) -> list[web.RouteDef]:
    """GET STATS_PATH?interval_s=.. (ends the cell's telemetry interval) and GET ACTIVITY_PATH."""

    async def stats(request: web.Request) -> web.Response:
        try:
            interval_s = float(request.query.get("interval_s", "0"))
        except ValueError:
            return web.json_response({"error": "interval_s must be a number"}, status=400)
        if not interval_s > 0:
            return web.json_response({"error": "interval_s must be > 0"}, status=400)
        loads = core.stats.snapshot(interval_s)
        return web.json_response([load.model_dump(mode="json") for load in loads])

    async def active(_request: web.Request) -> web.Response:
        seen, queued = activity()
        return web.json_response({"seen": seen, "queued": queued})

    return [web.get(STATS_PATH, stats), web.get(ACTIVITY_PATH, active)]
