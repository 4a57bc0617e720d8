"""The aiohttp application: V2 routes, /metrics, OpenAPI, and the serving core's lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge_agent.config import AgentConfig
from edge_agent.http import v2
from edge_agent.http.auth import read_token, token_middleware, warn_if_exposed
from edge_agent.http.errors import error_middleware
from edge_agent.http.keys import CONFIG_KEY, CORE_KEY, METRICS_KEY, STARTUP_KEY
from edge_agent.http.openapi import openapi_document
from edge_agent.metrics import Metrics
from edge_agent.serving import ServingCore
from edge_agent.store import collect

__all__ = ["CONFIG_KEY", "CORE_KEY", "METRICS_KEY", "STARTUP_KEY", "make_app"]

logger = logging.getLogger(__name__)


async def _metrics(request: web.Request) -> web.Response:
    """GET /metrics in the Prometheus text format."""
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _openapi(request: web.Request) -> web.Response:
    """GET /v2/openapi.json (and /openapi.json)."""
    return web.json_response(openapi_document())


async def _start_core(app: web.Application) -> None:
    config, core = app[CONFIG_KEY], app[CORE_KEY]
    packages, active = await asyncio.to_thread(collect, config)
    await core.start(packages, active)


async def _serving_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load models in an owned task (HTTP answers live/not-ready meanwhile); unload on shutdown."""
    core = app[CORE_KEY]
    task = asyncio.create_task(_start_core(app), name="edge-agent-startup")
    app[STARTUP_KEY] = task
    yield
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception as exc:
        logger.error("startup had failed: %s", exc)
    await core.aclose()


def make_app(config: AgentConfig, *, metrics: Metrics | None = None) -> web.Application:
    """Build the agent's HTTP app; models load in the background once it starts (see STARTUP_KEY).

    Raises ConfigError when http.token_file is set but unusable.
    """
    token = None if config.http.token_file is None else read_token(config.http.token_file)
    warn_if_exposed(config.http.host, token)
    metrics = metrics if metrics is not None else Metrics()
    core = ServingCore(config, observer=metrics.observe_batch, metrics=metrics)

    def queue_rows() -> dict[str, int]:
        return core.batcher.queue_rows() if core.started else {}

    def model_ready() -> dict[str, bool]:
        return {m.key: m.ready for versions in core.models().values() for m in versions.values()}

    metrics.watch(queue_rows, model_ready)
    middlewares = [error_middleware] if token is None else [error_middleware, token_middleware(token)]
    app = web.Application(client_max_size=config.http.max_body_bytes, middlewares=middlewares)
    app[CONFIG_KEY] = config
    app[CORE_KEY] = core
    app[METRICS_KEY] = metrics
    app.add_routes(v2.routes())
    app.add_routes(
        [
            web.get("/metrics", _metrics),
            web.get("/v2/openapi.json", _openapi),
            web.get("/openapi.json", _openapi),
        ]
    )
    app.cleanup_ctx.append(_serving_ctx)
    return app
