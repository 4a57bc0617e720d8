"""The agent's listening sockets: a connection cap each, header / idle / keep-alive timeouts, accept pauses.

aiohttp's sites accept without limit (a listener runs out of file descriptors, and asyncio's accept loop then
logs `socket.accept() out of system resource` once per backlog slot per second), wait 3630 s on an idle
keep-alive connection and have no header timeout. Here each listening socket is served by a `Listener` with
its own accept loop: at most `cap` connections (max_connections, lowered to fit RLIMIT_NOFILE); at the cap a
new connection evicts the longest-idle one or, if every connection is busy, is closed at once; on EMFILE it
stops accepting for accept_pause_s and logs once a minute at most. `_Handler` (aiohttp's RequestHandler)
adds the timeouts and stamps every request with its arrival: the loop time at which `data_received` got the
request's first byte, i.e. the first loop iteration after the kernel had it (one iteration of loop lag late
at most; kernel receive timestamps are not reachable through asyncio transports). Of several requests
pipelined in one read, the later ones get that read's time.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from edge_agent.config import HttpConfig
from edge_agent.http import sockets
from edge_agent.http.keys import ARRIVAL_KEY

__all__ = ["Listener", "ListenerSite", "handler_args", "listen", "listener_sites"]

log = logging.getLogger(__name__)

ACCEPT_BATCH = 32  # connections accepted per readiness event; fd_reserve must cover one batch of evictions
LOG_EVERY_S = 60.0
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def handler_args(http: HttpConfig) -> dict[str, Any]:
    """RequestHandler arguments of the agent's app: raw bodies (intake.py inflates them), keep-alive bound."""
    return {"auto_decompress": False, "keepalive_timeout": http.keepalive_timeout_s}


class _Handler(RequestHandler):
    """aiohttp's connection handler plus arrival stamps, header and body-idle timeouts, and idle tracking.

    Uses RequestHandler's internals (`_messages`, `_request_factory`, `_loop`, the pause flags) of aiohttp
    3.14; tests/edge_agent/test_listener.py fails if they change.
    """

    def __init__(self, manager: Server, listener: Listener, **kwargs: Any) -> None:
        super().__init__(manager, loop=listener.loop, **kwargs)
        self._listener = listener
        self._header_s = listener.http.header_timeout_s
        self._idle_s = listener.http.idle_timeout_s
        self._arrivals: deque[float] = deque()  # one per parsed request not yet handed to a handler
        self._started: float | None = None  # first byte of a request whose head is not complete
        self._head_by: float | None = None
        self._payload: StreamReader | None = None  # body of the last parsed request
        self._last_rx = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        make = self._request_factory
        assert make is not None

        def stamped(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> BaseRequest:
            request = make(message, payload, protocol, writer, task)
            request[ARRIVAL_KEY] = self._arrivals.popleft() if self._arrivals else self._loop.time()
            return request

        self._request_factory = stamped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_by = self._loop.time() + self._header_s  # the first request's head counts from the open
        self._arm(self._head_by)
        self._listener.made(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._listener.lost(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        if data:
            self._last_rx = now
            payload = self._payload
            if self._started is None and (payload is None or payload.is_eof()):
                self._started = now  # a new request's first byte
                self._listener.busy(self)
                if self._head_by is None:
                    self._head_by = now + self._header_s
                    self._arm(self._head_by)
        before = len(self._messages)
        super().data_received(data)
        added = len(self._messages) - before
        if added > 0:
            first = now if self._started is None else self._started
            self._arrivals.append(first)
            self._arrivals.extend([now] * (added - 1))
            self._started = self._head_by = None
            self._payload = payload = self._messages[-1][1]
            if not payload.is_eof():
                self._arm(now + self._idle_s)

    async def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> tuple[StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if not self._messages and self._started is None:
            self._listener.idle(self)
        return result

    def _arm(self, when: float) -> None:
        if when >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if self.transport is None:
            return
        now = self._loop.time()
        if self._head_by is not None:
            if now >= self._head_by:
                self._listener.close_for(self, "header timeout")
                return
            self._arm(self._head_by)
        payload = self._payload
        if payload is not None and not payload.is_eof() and self._started is None:
            if self._reading_paused or self._buffer_paused:
                self._last_rx = now  # we stopped reading, not the client
            elif now >= self._last_rx + self._idle_s:
                self._listener.close_for(self, "idle timeout")
                return
            self._arm(self._last_rx + self._idle_s)


class Listener:
    """One listening socket and its connections: the cap, eviction, EMFILE pauses; counts in `counts`."""

    def __init__(self, server: Server, sock: socket.socket, cap: int, http: HttpConfig, name: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.http = http
        self.cap = cap
        self.name = name
        self.sock = sock
        self.counts: Counter[str] = Counter()
        self._server = server
        self._kwargs = {**handler_args(http), "access_log": None}
        self._conns: set[_Handler] = set()
        self._idle: OrderedDict[_Handler, None] = OrderedDict()  # oldest idle first
        self._pending = 0  # accepted, transport not made yet
        self._tasks: set[asyncio.Task[None]] = set()
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False
        self._logged_at = -math.inf
        self._unlogged = 0

    @property
    def open(self) -> int:
        """Connections held (accepted and not closed)."""
        return len(self._conns) + self._pending

    def start(self) -> None:
        """Start accepting."""
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self._pause(exc)
                else:
                    self._log("accept failed", exc)
                return
            self.counts["accepted"] += 1
            if self.open >= self.cap and not self._evict():
                conn.close()
                self.counts["refused"] += 1
                continue
            conn.setblocking(False)
            self._pending += 1
            task = self.loop.create_task(self._connect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: _Handler(self._server, self, **self._kwargs), sock=conn)
        except Exception as exc:
            log.debug("connection on %s failed to start: %s", self.name, exc)
            conn.close()
        finally:
            self._pending -= 1

    def _evict(self) -> bool:
        if not self._idle:
            return False
        victim, _ = self._idle.popitem(last=False)
        self._conns.discard(victim)  # its descriptor is closed with its transport
        victim.force_close()
        self.counts["evicted"] += 1
        return True

    def _pause(self, exc: OSError) -> None:
        self.counts["accept paused"] += 1
        self._log(f"accept paused for {self.http.accept_pause_s:g} s", exc)
        self.loop.remove_reader(self.sock.fileno())
        self._resume = self.loop.call_later(self.http.accept_pause_s, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        if not self._closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _log(self, what: str, exc: OSError) -> None:
        now = self.loop.time()
        if now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last such line)" if self._unlogged else ""
        log.warning("%s on %s: %s%s", what, self.name, exc, more)
        self._logged_at, self._unlogged = now, 0

    # --- called by the handlers ------------------------------------------------------------------

    def made(self, handler: _Handler) -> None:
        self._conns.add(handler)
        self._idle[handler] = None

    def busy(self, handler: _Handler) -> None:
        self._idle.pop(handler, None)

    def idle(self, handler: _Handler) -> None:
        if handler in self._conns:
            self._idle[handler] = None
            self._idle.move_to_end(handler)

    def lost(self, handler: _Handler) -> None:
        self._conns.discard(handler)
        self._idle.pop(handler, None)

    def close_for(self, handler: _Handler, reason: str) -> None:
        self.counts[reason] += 1
        log.debug("closing a connection on %s: %s", self.name, reason)
        handler.force_close()

    def close(self) -> None:
        """Stop accepting and close the socket (connections are the runner's to shut down)."""
        if self._closed:
            return
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        else:
            self.loop.remove_reader(self.sock.fileno())
        if self.sock.family == socket.AF_UNIX:
            path = self.sock.getsockname()
            if isinstance(path, str) and path:
                Path(path).unlink(missing_ok=True)
        self.sock.close()
        for task in self._tasks:
            task.cancel()


class ListenerSite(web.BaseSite):
    """An aiohttp site served by a Listener (registered with the runner, stopped by runner.cleanup())."""

    __slots__ = ("listener",)

    def __init__(self, runner: web.BaseRunner, listener: Listener) -> None:
        super().__init__(runner, backlog=listener.http.backlog)
        self.listener = listener

    @property
    def name(self) -> str:
        return self.listener.name

    @property
    def port(self) -> int | None:
        """The bound TCP port (None for a Unix socket)."""
        address = self.listener.sock.getsockname()
        return int(address[1]) if isinstance(address, tuple) else None

    async def start(self) -> None:
        await super().start()
        self.listener.start()

    async def stop(self) -> None:
        self.listener.close()
        await super().stop()


def listener_sites(runner: web.BaseRunner, http: HttpConfig, socks: Sequence[socket.socket]) -> list[ListenerSite]:
    """Sites (not started) serving `runner` on listening sockets, each with its own cap and http's limits."""
    server = runner.server
    if server is None:
        raise RuntimeError("call runner.setup() before making sites")
    cap = sockets.connection_cap(http, len(socks))
    sites: list[ListenerSite] = []
    for sock in socks:
        address = sock.getsockname()
        name = f"http://unix:{address}:" if sock.family == socket.AF_UNIX else f"http://{address[0]}:{address[1]}"
        sites.append(ListenerSite(runner, Listener(server, sock, cap, http, name)))
    return sites


async def listen(
    runner: web.BaseRunner,
    http: HttpConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    unix_socket: Path | None = None,
) -> list[ListenerSite]:
    """Bind and start the listeners of `runner` (after setup): TCP on host:port (default http's) and a Unix
    socket (default http.unix_socket, if any); returns the started sites, TCP first."""
    socks = await asyncio.to_thread(sockets.bind, http, host=host, port=port, unix_socket=unix_socket)
    try:
        sites = listener_sites(runner, http, socks)
        for site in sites:
            await site.start()
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return sites
