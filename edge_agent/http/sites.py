"""Where a serving process listens: the sockets a safety cell's supervisor passed it, or its own [http] ones."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from edge_agent.config import AgentConfig
from edge_agent.http.listener import ListenerSite, listener_sites
from edge_agent.http.sockets import bind as bind_sockets

__all__ = ["Listeners", "bound_port", "sites"]


@dataclass(frozen=True, slots=True)
class Listeners:
    """How a supervised child serves: the listening sockets its supervisor bound, and where it tells it is
    ready (None everywhere: the one-process agent binds [http] itself)."""

    role: str | None = None  # "cell" | "main" | None
    listen_fd: int | None = None
    unix_fd: int | None = None
    ready_fd: int | None = None
    cell_url: str | None = None
    cell_socket: Path | None = None


def bound_port(site: web.BaseSite) -> int | None:
    if isinstance(site, ListenerSite):
        return site.port
    server = getattr(site, "_server", None)
    for sock in getattr(server, "sockets", None) or []:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return int(sock.getsockname()[1])
    return None


async def sites(runner: web.AppRunner, config: AgentConfig, listeners: Listeners) -> list[web.BaseSite]:
    """Capped, timed listeners (http/listener.py) on the role's inherited sockets, or bound here."""
    if listeners.listen_fd is None:
        socks = await asyncio.to_thread(bind_sockets, config.http)
    else:
        socks = [socket.socket(fileno=listeners.listen_fd)]
        if listeners.unix_fd is not None:
            socks.append(socket.socket(fileno=listeners.unix_fd))
    return list(listener_sites(runner, config.http, socks))
