"""The demo's load generator: V2 binary requests to the agents' pipelines, with where each one ran.

Steady traffic is open loop (a request every 1/rate s, whatever the answers do); a burst is closed loop
with many workers, which is what overflows a device. Each answer is classified by the agent's route header
(`X-Edgefleet-Route`: local, cloud, rejected, expired); an answer without the header counts as local if it
succeeded, and `route_header_seen` says whether the agent sent it at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from protocols.binary import HEADER_LENGTH, encode_request

ROUTE_HEADER = "X-Edgefleet-Route"
ROUTES = ("local", "cloud", "rejected", "expired", "error")
MAX_OUTSTANDING = 64  # per steady stream: an open loop must not pile up without bound if a device stalls
LIVE_WINDOW = 400  # latencies the live view's percentiles are computed over


@dataclass(frozen=True)
class Target:
    """One pipeline on one agent."""

    device: str
    pipeline: str
    priority: str
    deadline_ms: int
    url: str

    @property
    def key(self) -> str:
        """`device/pipeline`."""
        return f"{self.device}/{self.pipeline}"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass
class PipelineStats:
    """What the generator saw for one target."""

    target: Target
    sent: int = 0
    routes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    by_phase: dict[str, list[float]] = field(default_factory=dict)
    missed_deadline: int = 0
    misses: list[tuple[float, str, float]] = field(default_factory=list)  # (sent at, phase, ms), first 20
    agent_view: dict[str, Any] | None = None  # the agent's own counts (agentmetrics.pipeline_view)
    route_header_seen: bool = False
    last_error: str | None = None

    def record(self, route: str, latency_ms: float, *, header: bool, phase: str = "", sent_at: float = 0.0) -> None:
        """Count one answer; latency is kept for answered requests (local or cloud)."""
        self.routes[route] += 1
        self.route_header_seen |= header
        if route in ("local", "cloud"):
            self.latencies_ms.append(latency_ms)
            self.by_phase.setdefault(phase, []).append(latency_ms)
            if latency_ms > self.target.deadline_ms:
                self.missed_deadline += 1
                if len(self.misses) < 20:
                    self.misses.append((round(sent_at, 2), phase, round(latency_ms, 1)))

    def live(self) -> tuple[float | None, float | None]:
        """p50 and p99 over the most recent answers."""
        recent = self.latencies_ms[-LIVE_WINDOW:]
        return percentile(recent, 50), percentile(recent, 99)

    def to_json(self) -> dict[str, Any]:
        """Summary row."""
        t = self.target
        return {
            "device": t.device,
            "pipeline": t.pipeline,
            "priority": t.priority,
            "deadline_ms": t.deadline_ms,
            "sent": self.sent,
            "answered": len(self.latencies_ms),
            "routes": {r: self.routes[r] for r in ROUTES},
            "p50_ms": percentile(self.latencies_ms, 50),
            "p99_ms": percentile(self.latencies_ms, 99),
            "max_ms": max(self.latencies_ms, default=None),
            "missed_deadline": self.missed_deadline,
            "misses": [{"sent_at_s": t, "phase": p, "ms": ms} for t, p, ms in self.misses],
            "phases": {
                phase: {"answered": len(v), "p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99), "max_ms": max(v)}
                for phase, v in self.by_phase.items()
            },
            "agent": self.agent_view,
            "route_header_seen": self.route_header_seen,
            "last_error": self.last_error,
        }


class Traffic:
    """Sends requests to targets over one keep-alive session; an async context manager."""

    def __init__(self, targets: list[Target], seed: int = 7) -> None:
        self.stats = {t.key: PipelineStats(t) for t in targets}
        self.phase = "start"
        self.epoch = 0.0  # loop time that `sent_at_s` of misses counts from
        self._rng = np.random.default_rng(seed)
        self._bodies: dict[tuple[int, int | None], tuple[bytes, dict[str, str]]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Traffic:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open HTTP session."""
        assert self._session is not None, "use `async with Traffic(...)`"
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _body(self, batch: int, timeout_us: int | None) -> tuple[bytes, dict[str, str]]:
        """The encoded request (made once per shape: encoding is not what the demo measures)."""
        key = (batch, timeout_us)
        if key not in self._bodies:
            images = self._rng.standard_normal((batch, 3, 64, 64), dtype=np.float32)
            params = {"timeout": timeout_us} if timeout_us else None
            body, header_len = encode_request(inputs={"input": images}, outputs=["scores"], parameters=params)
            headers = {"Content-Type": "application/octet-stream"}
            if header_len is not None:
                headers[HEADER_LENGTH] = str(header_len)
            self._bodies[key] = body, headers
        return self._bodies[key]

    async def one(self, target: Target, timeout_us: int | None = None, batch: int = 1) -> None:
        """Send one request of `batch` images and record where it ran and how long it took."""
        assert self._session is not None, "use `async with Traffic(...)`"
        stats = self.stats[target.key]
        phase = self.phase
        body, headers = self._body(batch, timeout_us)
        url = f"{target.url}/v2/models/{target.pipeline}/infer"
        loop = asyncio.get_running_loop()
        stats.sent += 1
        start = loop.time()
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                await resp.read()
                routed = resp.headers.get(ROUTE_HEADER)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats.last_error = f"{type(exc).__name__}: {exc}"
            stats.record("error", 0.0, header=False, phase=phase)
            return
        latency_ms = (loop.time() - start) * 1000
        if routed in ROUTES:
            route = routed
        elif status == 200:
            route = "local"
        elif status == 503:
            route = "rejected"
        else:
            route = "error"
            stats.last_error = f"HTTP {status}"
        stats.record(route, latency_ms, header=routed is not None, phase=phase, sent_at=start - self.epoch)

    async def steady(self, target: Target, rate_hz: float, stop: asyncio.Event) -> None:
        """Open loop at `rate_hz` until `stop` is set; waits for the requests in flight."""
        loop = asyncio.get_running_loop()
        period = 1.0 / rate_hz
        pending: set[asyncio.Task[None]] = set()
        next_at = loop.time()
        try:
            while not stop.is_set():
                if len(pending) < MAX_OUTSTANDING:
                    task = asyncio.create_task(self.one(target))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                next_at += period
                delay = next_at - loop.time()
                if delay < -1.0:
                    next_at = loop.time()  # the loop fell behind (busy CPU): do not catch up in a flood
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, delay))
        finally:
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def burst(
        self, target: Target, workers: int, duration_s: float, *, batch: int = 1, timeout_us: int | None = None
    ) -> None:
        """`workers` closed loops hammering `target` with `batch`-image requests for `duration_s`."""
        loop = asyncio.get_running_loop()
        until = loop.time() + duration_s

        async def worker() -> None:
            while loop.time() < until:
                await self.one(target, timeout_us, batch)

        await asyncio.gather(*(worker() for _ in range(workers)))
