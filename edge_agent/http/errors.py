"""The one place errors become HTTP responses: `{"error": "..."}` with Triton's status codes."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable

from aiohttp import web

from edge_agent.errors import (
    AgentError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from protocols.common import ProtocolError

__all__ = ["error_kind", "error_middleware", "error_response", "status_for"]

logger = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (InvalidInput, 400),
    (ProtocolError, 400),  # includes protocols.binary.CodecError
    (NotFound, 404),
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
    (Unavailable, 503),
    (AgentError, 500),
)
_JSON = "application/json"


def status_for(exc: BaseException) -> int:
    """HTTP status of an error (500 for anything unexpected)."""
    if isinstance(exc, web.HTTPException):
        return exc.status
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_kind(exc: BaseException) -> str:
    """Short label of an error for metrics."""
    return type(exc).__name__


def error_response(exc: BaseException) -> web.Response:
    """`{"error": message}` with the mapped status (and Retry-After on 503)."""
    status = status_for(exc)
    if status == 500 and not isinstance(exc, AgentError):
        logger.error("internal error: %s", exc, exc_info=exc)
        message = "internal error"
    elif isinstance(exc, web.HTTPException):
        message = exc.reason if exc.status != 413 else "request body is larger than the configured limit"
    else:
        message = str(exc)
    headers = {"Content-Type": _JSON}
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, web.HTTPException) and "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]  # a 405 names the methods the resource takes (RFC 9110)
    return web.Response(status=status, body=json.dumps({"error": message}).encode(), headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn agent, protocol and aiohttp errors (e.g. unknown routes) into `{"error"}` responses."""
    try:
        return await handler(request)
    except (AgentError, ProtocolError) as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc)
