"""The aiohttp application: V2 routes, /metrics and OpenAPI over a serving core (its lifecycle is app.py's)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge_agent.config import HttpConfig
from edge_agent.http import repository, triton, v2
from edge_agent.http.auth import read_token, token_middleware, warn_if_exposed
from edge_agent.http.errors import error_middleware
from edge_agent.http.intake import BodyReader
from edge_agent.http.keys import CORE_KEY, INTAKE_KEY, METRICS_KEY
from edge_agent.http.listener import handler_args
from edge_agent.http.openapi import openapi_document
from edge_agent.metrics import Metrics
from edge_agent.serving.control import ModelControl
from edge_agent.serving.core import ServingCore

__all__ = ["make_app"]


async def _metrics(request: web.Request) -> web.Response:
    """GET /metrics in the Prometheus text format."""
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _openapi(request: web.Request) -> web.Response:
    """GET /v2/openapi.json (and /openapi.json)."""
    return web.json_response(openapi_document())


def make_app(core: ServingCore, metrics: Metrics, http: HttpConfig) -> web.Application:
    """The agent's HTTP app over `core`; raises ConfigError when http.token_file is set but unusable."""
    token = None if http.token_file is None else read_token(http.token_file)
    warn_if_exposed(http.host, token)
    middlewares = [error_middleware] if token is None else [error_middleware, token_middleware(token)]
    app = web.Application(client_max_size=http.max_body_bytes, middlewares=middlewares, handler_args=handler_args(http))
    app[CORE_KEY] = core
    app[METRICS_KEY] = metrics
    intake = app[INTAKE_KEY] = BodyReader(http)

    async def close_intake(_app: web.Application) -> None:
        intake.close()

    app.on_cleanup.append(close_intake)
    app[repository.CONTROL_KEY] = ModelControl(core)
    app.add_routes(triton.routes())  # first: /v2/models/stats must not be read as a model named "stats"
    app.add_routes(repository.routes())
    app.add_routes(v2.routes())
    app.add_routes(
        [
            web.get("/metrics", _metrics),
            web.get("/v2/openapi.json", _openapi),
            web.get("/openapi.json", _openapi),
        ]
    )
    return app
