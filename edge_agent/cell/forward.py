"""The main process's side of the safety cell: V2 requests for safety pipelines forwarded to the cell (the
compatibility path: safety apps should call the cell's own address, where best-effort load cannot reach them),
and the cell's load and activity read for telemetry and the reconciler's gate."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
from aiohttp import web

from edge_agent.cell.routes import ACTIVITY_PATH, STATS_PATH
from edge_agent.serving.stats import PipelineStatsSource
from protocols.messages import PipelineLoad

__all__ = ["CELL_HEADER", "CellClient", "CombinedStats", "Forwarder"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CELL_HEADER = "X-Edgefleet-Safety-Cell"  # on forwarded answers: the address safety apps should call
CONTROL_TIMEOUT_S = 0.25
_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "te", "upgrade"}
_KEEP = ("Content-Type", "Inference-Header-Content-Length", "X-Edgefleet-Route", "X-Edgefleet-Pool", "Allow")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


class CellClient:
    """Blocking reads of the cell's control endpoints (a local socket, answered in about a millisecond; a
    stopped or dead cell costs at most CONTROL_TIMEOUT_S and reads as no data)."""

    def __init__(self, url: str, unix_socket: Path | None, token: str | None) -> None:
        self.url = url
        self.unix_socket = unix_socket
        self._headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        host, _, port = url.removeprefix("http://").rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)

    def _get(self, path: str, *, quiet: bool = False) -> object | None:
        conn: http.client.HTTPConnection = (
            _UnixConnection(self.unix_socket, CONTROL_TIMEOUT_S)
            if self.unix_socket is not None
            else http.client.HTTPConnection(self._host, self._port, timeout=CONTROL_TIMEOUT_S)
        )
        try:
            conn.request("GET", path, headers=self._headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                if not quiet:
                    log.warning("safety cell answered %s to %s", response.status, path)
                return None
            data: object = json.loads(body)
            return data
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if not quiet:
                log.warning("safety cell unreachable at %s (%s)", self.url, exc)
            return None
        finally:
            conn.close()

    def ready(self) -> bool:
        """True once the cell answers its V2 readiness probe (its models loaded and warm)."""
        return self._get("/v2/health/ready", quiet=True) is not None

    async def wait_ready(self, timeout_s: float = 120.0, poll_s: float = 0.1) -> bool:
        """Wait (off the loop) until the cell is ready; False after `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if await asyncio.to_thread(self.ready):
                return True
            await asyncio.sleep(poll_s)
        return False

    def snapshot(self, interval_s: float) -> list[PipelineLoad]:
        data = self._get(f"{STATS_PATH}?interval_s={interval_s}")
        if not isinstance(data, list):
            return []
        return [PipelineLoad.model_validate(item) for item in data]

    def activity(self) -> tuple[int, bool]:
        """(safety requests the cell answered, whether it has rows queued); a cell that cannot be asked counts
        as active (the gate then defers a switch rather than risk one under safety load)."""
        data = self._get(ACTIVITY_PATH)
        if not isinstance(data, dict):
            return -1, True
        return int(data.get("seen", 0)), bool(data.get("queued", False))


class CombinedStats:
    """Telemetry's view of the device: this process's pipelines plus the cell's."""

    def __init__(self, local: PipelineStatsSource, cell: CellClient) -> None:
        self._local, self._cell = local, cell

    def snapshot(self, interval_s: float) -> Sequence[PipelineLoad]:
        return [*self._local.snapshot(interval_s), *self._cell.snapshot(interval_s)]


class Forwarder:
    """aiohttp middleware of the main process: /v2/models/{safety pipeline}/... goes to the cell."""

    def __init__(self, names: frozenset[str], cell: CellClient) -> None:
        self.names, self.cell = names, cell
        self._session: aiohttp.ClientSession | None = None
        self.forwarded = 0

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(path=str(self.cell.unix_socket))
                if self.cell.unix_socket is not None
                else aiohttp.TCPConnector(limit=64)
            )
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.get("model") not in self.names:
            return await handler(request)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        inflated = getattr(request.content, "total_compressed_bytes", None) is not None
        if not inflated and "Content-Encoding" in request.headers:
            headers["Content-Encoding"] = request.headers["Content-Encoding"]  # not inflated here: pass it on
        url = f"{self.cell.url}{request.rel_url}"
        self.forwarded += 1
        try:
            async with self.session().request(request.method, url, data=body, headers=headers) as answer:
                payload = await answer.read()
                out = {k: answer.headers[k] for k in _KEEP if k in answer.headers}
        except aiohttp.ClientError as exc:
            return web.json_response({"error": f"the safety cell at {self.cell.url} is unavailable: {exc}"}, status=503)
        out[CELL_HEADER] = self.cell.url
        return web.Response(status=answer.status, body=payload, headers=out)
