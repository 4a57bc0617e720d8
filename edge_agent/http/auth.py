"""Optional bearer token on the local V2 endpoint, for agents whose HTTP port is exposed beyond loopback.

With `http.token_file` set, every route except the two health probes needs `Authorization: Bearer <token>`
(tritonclient: `headers={"Authorization": "Bearer ..."}` on each call). The token is read from a file so it
never shows on a command line (`ps`) or in the config; it is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import stat
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from edge_agent.errors import ConfigError
from edge_agent.http.errors import Handler

__all__ = ["OPEN_PATHS", "is_loopback", "read_token", "token_middleware", "warn_if_exposed"]

log = logging.getLogger(__name__)

# Load balancers and kubelets probe these without credentials; they reveal nothing but up/ready.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
MIN_TOKEN_CHARS = 16
_MAX_TOKEN_BYTES = 4096


def read_token(path: Path) -> str:
    """The token in `path` (surrounding whitespace stripped); ConfigError if unreadable, empty or too short."""
    try:
        info = path.stat()
        raw = path.read_bytes()[: _MAX_TOKEN_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"cannot read http.token_file {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"http.token_file {str(path)!r} must hold an ASCII token") from exc
    if len(raw) > _MAX_TOKEN_BYTES or len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(
            f"http.token_file {str(path)!r} must hold one token of {MIN_TOKEN_CHARS} to {_MAX_TOKEN_BYTES} "
            "printable characters without spaces"
        )
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("http.token_file %s is readable by group or others: chmod 600 it", path)
    return token


def is_loopback(host: str) -> bool:
    """True if binding `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or '' (all interfaces): assume reachable from outside


def warn_if_exposed(host: str, token: str | None) -> None:
    """Log a WARNING when the endpoint binds beyond loopback without a token."""
    if token is None and not is_loopback(host):
        log.warning(
            "HTTP endpoint binds %r (not loopback) without a token: anyone who can reach the port can run "
            "inference and read metrics; set http.token_file",
            host,
        )


def _unauthorized(message: str) -> web.Response:
    return web.Response(
        status=401,
        body=json.dumps({"error": message}).encode(),
        headers={"Content-Type": "application/json", "WWW-Authenticate": 'Bearer realm="edgefleet-agent"'},
    )


def token_middleware(token: str) -> Middleware:
    """Middleware requiring `Authorization: Bearer <token>` on every path but OPEN_PATHS."""
    expected = token.encode()

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return _unauthorized("missing bearer token")
            if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected):
                return _unauthorized("invalid token")
        return await handler(request)

    return check_token
