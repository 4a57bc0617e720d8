"""Listening sockets for listener.py: TCP (every address of a host) and Unix, and the connection cap that fits
RLIMIT_NOFILE."""

from __future__ import annotations

import logging
import os
import resource
import socket
import stat
from pathlib import Path

from edge_agent.config import HttpConfig
from edge_agent.errors import ConfigError

__all__ = ["bind", "connection_cap", "tcp_listeners", "unix_listener"]

log = logging.getLogger(__name__)


def connection_cap(http: HttpConfig, listeners: int) -> int:
    """Connections each of `listeners` listeners may hold: max_connections, or less to stay below RLIMIT_NOFILE."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return http.max_connections
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 0
    share = (soft - used - http.fd_reserve) // max(1, listeners)
    if share < 1:
        raise ConfigError(f"RLIMIT_NOFILE {soft} leaves no descriptor for connections ({used} open, fd_reserve)")
    if share < http.max_connections:
        log.warning(
            "RLIMIT_NOFILE %s: %s connections per listener, not max_connections %s", soft, share, http.max_connections
        )
    return min(http.max_connections, share)


def tcp_listeners(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening sockets on every address of `host` (blocking: resolves the name)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def unix_listener(path: Path, backlog: int) -> socket.socket:
    """A bound, listening Unix socket at `path` (a stale socket file there is replaced)."""
    if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
        path.unlink()  # a stale socket of an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def bind(
    http: HttpConfig, *, host: str | None = None, port: int | None = None, unix_socket: Path | None = None
) -> list[socket.socket]:
    """Listening sockets: TCP on host:port (default http's), then the Unix socket (default http.unix_socket)."""
    socks = tcp_listeners(http.host if host is None else host, http.port if port is None else port, http.backlog)
    path = http.unix_socket if unix_socket is None else unix_socket
    if path is not None:
        try:
            socks.append(unix_listener(path, http.backlog))
        except OSError:
            for sock in socks:
                sock.close()
            raise
    return socks
