"""The one place where hub errors become HTTP statuses; every error body is {"error": "..."}."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

from aiohttp import web

from cloud_hub.errors import Conflict, Forbidden, HubError, InvalidRequest, NotFound, TooManyRequests, Unauthorized

log = logging.getLogger(__name__)

STATUS: tuple[tuple[type[HubError], int], ...] = (
    (InvalidRequest, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (TooManyRequests, 429),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_of(exc: HubError) -> int:
    """HTTP status of a hub error (500 for anything not client-caused)."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, message: str) -> web.Response:
    """A JSON error response."""
    headers = {"WWW-Authenticate": 'Bearer realm="edgefleet-hub"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map HubError and aiohttp's HTTP errors to {"error"} bodies; hide internal errors' details."""
    try:
        return await handler(request)
    except HubError as exc:
        status = status_of(exc)
        if status >= 500:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(status, "internal error")
        response = error_response(status, str(exc))
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal error")
