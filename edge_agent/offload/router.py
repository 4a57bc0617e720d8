"""Overflow routing to cloud pools: pool choice, circuit breakers, health probes, replaceable pool set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.config import OffloadConfig
from edge_agent.errors import AgentError
from edge_agent.metrics import Metrics
from edge_agent.offload.breaker import BreakerState, CircuitBreaker
from edge_agent.offload.client import PoolClient, PoolError
from protocols.messages import PoolEndpoint
from protocols.pipeline import PipelineSpec

__all__ = ["LATENCY_ALPHA", "OffloadRefused", "OffloadRouter", "Pool"]

logger = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray[Any, Any]]
LATENCY_ALPHA = 0.2  # weight of a new round trip in a pool's latency EWMA
# A latency figure older than this no longer excludes a pool: one request goes through to refresh it, so a
# pool that was slow once is not shunned forever by the pipelines with short deadlines.
LATENCY_STALE_S = 1.0


class OffloadRefused(AgentError):
    """A request of a pipeline with offload `never` was about to leave the device (a bug: never allowed)."""


class Pool:
    """One pool: its client, breaker, outstanding requests and measured latency."""

    def __init__(self, endpoint: PoolEndpoint, client: PoolClient, breaker: CircuitBreaker) -> None:
        self.endpoint = endpoint
        self.client = client
        self.breaker = breaker
        self.outstanding = 0
        self.latency_s: float | None = None
        self.latency_at = 0.0
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def name(self) -> str:
        """Pool name."""
        return self.endpoint.name

    def observe_latency(self, seconds: float, now: float) -> None:
        """Fold one successful round trip into the latency EWMA."""
        self.latency_at = now
        old = self.latency_s
        self.latency_s = seconds if old is None else old + LATENCY_ALPHA * (seconds - old)


class OffloadRouter:
    """Chooses a pool for an overflow request and runs it there behind the pool's circuit breaker."""

    def __init__(
        self,
        config: OffloadConfig,
        pools: Sequence[PoolEndpoint] = (),
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_offer: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self._config = config
        # on_offer(pipeline, pool, rows) for every request sent to a pool: telemetry's per-pool demand.
        self._on_offer = on_offer
        self._metrics = metrics
        self._clock = clock
        self._pools: dict[str, Pool] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._probe_task: asyncio.Task[None] | None = None
        self.set_pools(pools)

    # --- pool set --------------------------------------------------------------------------------

    def pools(self) -> dict[str, Pool]:
        """Current pools by name."""
        return dict(self._pools)

    def set_pools(self, endpoints: Sequence[PoolEndpoint]) -> None:
        """Replace the pool set (config now, the hub's desired state later); unchanged pools keep their state."""
        fresh: dict[str, Pool] = {}
        for endpoint in endpoints:
            old = self._pools.get(endpoint.name)
            if old is not None and old.endpoint == endpoint:
                fresh[endpoint.name] = old
                continue
            client = PoolClient(
                endpoint,
                connect_timeout_s=self._config.connect_timeout_s,
                max_connections=self._config.max_connections,
            )
            breaker = CircuitBreaker(endpoint.name, self._config.breaker, clock=self._clock, on_change=self._changed)
            fresh[endpoint.name] = Pool(endpoint, client, breaker)
            self._changed(endpoint.name, "closed")
        for name, pool in self._pools.items():
            if fresh.get(name) is not pool:
                self._retire(pool)
        self._pools = fresh
        logger.info("offload pools: %s", ", ".join(sorted(fresh)) or "none")

    def _retire(self, pool: Pool) -> None:
        """Close a removed pool's session once its in-flight requests are done (owned task)."""
        if self._metrics is not None:
            self._metrics.forget_pool(pool.name)
        try:
            task = asyncio.get_running_loop().create_task(self._close_when_idle(pool))
        except RuntimeError:
            return  # no loop yet: the session was never opened
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_when_idle(pool: Pool) -> None:
        await pool.idle.wait()
        await pool.client.aclose()

    def _changed(self, name: str, state: BreakerState) -> None:
        if self._metrics is not None:
            self._metrics.set_pool_state(name, state)

    # --- choice and requests ---------------------------------------------------------------------

    def pick(self, model: str, remaining_s: float, *, cheapest: bool = False) -> Pool | None:
        """The pool for `model` that can answer within `remaining_s` (breaker closed or half-open with a free
        probe slot, measured latency within the time left); None if none.

        The fastest by default (fewest outstanding requests, then lowest latency); with `cheapest` (best-effort
        requests) the one with the lowest declared `cost` among those that fit, then the fastest of those."""
        best: Pool | None = None
        best_key = (0.0, 0, 0.0)
        now = self._clock()
        for pool in self._pools.values():
            if not pool.client.serves(model) or not pool.breaker.available():
                continue
            if pool.outstanding >= self._config.max_outstanding:
                continue
            latency = pool.latency_s or 0.0
            if latency > remaining_s and now - pool.latency_at < LATENCY_STALE_S:
                continue
            key = (pool.endpoint.cost if cheapest else 0.0, pool.outstanding, latency)
            if best is None or key < best_key:
                best, best_key = pool, key
        return best

    async def infer(
        self,
        pipeline: PipelineSpec,
        pool: Pool,
        *,
        version: str | None,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        outputs: Sequence[str] | None,
        timeout_s: float,
        rows: int = 1,
    ) -> Tensors:
        """Run a request of `pipeline` on `pool`; PoolError if it does not answer (the caller may go local)."""
        if pipeline.effective_offload == "never":
            # Safety pipelines never leave the device: enforced here, not only by the caller.
            raise OffloadRefused(f"pipeline {pipeline.name!r} has offload 'never'")
        probe = pool.breaker.acquire()
        if probe is None:
            raise PoolError(f"pool {pool.name} circuit breaker is {pool.breaker.state}")
        if self._on_offer is not None:
            self._on_offer(pipeline.name, pool.name, rows)
        pool.outstanding += 1
        pool.idle.clear()
        start = self._clock()
        try:
            result = await pool.client.infer(pipeline.model, version, inputs, outputs, timeout_s)
        except PoolError as exc:
            # A pool that says 503 is alive, only full; a timeout shorter than twice its usual latency says
            # more about our remaining deadline than about the pool: neither counts against the breaker.
            usual = pool.latency_s
            if exc.busy or (exc.timed_out and usual is not None and timeout_s < 2 * usual):
                pool.breaker.release(probe)
            else:
                pool.breaker.record(False, probe)
            raise
        except BaseException:
            pool.breaker.release(probe)  # cancelled by our caller: no verdict on the pool
            raise
        finally:
            pool.outstanding -= 1
            if not pool.outstanding:
                pool.idle.set()
        elapsed = self._clock() - start
        pool.breaker.record(True, probe)
        pool.observe_latency(elapsed, self._clock())
        if self._metrics is not None:
            self._metrics.observe_pool_latency(pool.name, elapsed)
        return result

    # --- background health probes ----------------------------------------------------------------

    async def start(self) -> None:
        """Start the background health-probe loop (inside the running loop)."""
        if self._probe_task is None:
            self._probe_task = asyncio.create_task(self._probe_loop(), name="offload-probes")

    async def probe_once(self) -> None:
        """Probe every open pool whose cool-down is over with GET /v2/health/ready."""
        due = [pool for pool in self._pools.values() if pool.breaker.cooled_down()]
        if not due:
            return
        results = await asyncio.gather(*(pool.client.ready() for pool in due))
        for pool, ok in zip(due, results, strict=True):
            if ok:
                pool.breaker.probe_ok()
            else:
                pool.breaker.probe_failed()

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.probe_interval_s)
            try:
                await self.probe_once()
            except Exception:
                logger.exception("pool health probe failed")

    async def aclose(self) -> None:
        """Stop probing and close every pool's session."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        for pool in self._pools.values():
            await pool.client.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
