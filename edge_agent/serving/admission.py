"""Admission control: a request's class and deadline, and where it runs (local, a cloud pool, or 503 now).

completion estimate = now + rest of the running batch + batches already handed + work queued at equal or
higher priority (in batches of each model's max size) + the request's own batch + a margin. If that misses
the deadline (or the class queue is full), an `overflow` pipeline goes to a pool that can answer within the
remaining time; otherwise the request is rejected at once with 503 and Retry-After, never queued to die.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edge_agent.errors import Unavailable
from edge_agent.offload.client import PoolError
from edge_agent.offload.router import OffloadRouter
from edge_agent.scheduler.priority import SAFETY, PriorityScheduler
from edge_agent.scheduler.queue import CLASSES, Expired, QueueKey, Tensors
from protocols.pipeline import PRIORITY_RANK, PipelineSpec

__all__ = ["Admission", "Rejected", "Served", "answered_by", "budget_s", "effective_rank"]

logger = logging.getLogger(__name__)


class Rejected(Unavailable):
    """Admission control: the deadline cannot be met locally and no pool can take the request (HTTP 503)."""


@dataclass(frozen=True, slots=True)
class Served:
    """A request's outputs and where it ran."""

    outputs: Tensors
    where: Literal["local", "cloud"]
    pool: str | None = None


def effective_rank(pipeline_priority: str, priority: int) -> int:
    """Class rank of a request: Triton's `priority` (1 = highest, 0 = default) may lower the pipeline's class,
    never raise it: 1 -> safety, 2 -> standard, 3 and above -> best_effort, capped by the pipeline's class."""
    base = PRIORITY_RANK[pipeline_priority]
    if priority <= 0:
        return base
    return max(base, min(priority, CLASSES) - 1)


def budget_s(deadline_ms: int, timeout_us: int | None) -> float:
    """Seconds a request may take: the pipeline's deadline, shortened (never lengthened) by Triton's `timeout`."""
    budget = deadline_ms / 1000.0
    if timeout_us:  # 0 = no timeout, as in Triton
        budget = min(budget, timeout_us / 1e6)
    return budget


class Admission:
    """Decides local, cloud or 503 for each request, from the scheduler's estimates and the pools' state."""

    def __init__(self, scheduler: PriorityScheduler, router: OffloadRouter | None, *, margin_s: float) -> None:
        self._scheduler = scheduler
        self._router = router
        self._margin_s = margin_s

    def _local_fits(self, key: QueueKey, rows: int, rank: int, deadline: float) -> tuple[bool, float]:
        scheduler = self._scheduler
        estimate = scheduler.estimate_s(key, rows, rank)
        return scheduler.has_room(rank) and scheduler.now() + estimate + self._margin_s <= deadline, estimate

    def shed(self, pipeline: PipelineSpec, key: QueueKey, deadline: float) -> Rejected | None:
        """Pre-admission, before the body is read: a Rejected if the request is doomed whatever it carries.

        Judged at the pipeline's own class with one row, the most favourable case (a request's `priority` may
        only lower its class, its `timeout` only shorten its deadline, and more rows only add work): every
        class it could use is full or the estimated wait already misses the deadline, and no pool can take
        it. Safety is never shed here: it always gets the full admission check.
        """
        rank = PRIORITY_RANK[pipeline.priority]
        if rank == SAFETY:
            return None
        scheduler = self._scheduler
        now = scheduler.now()
        full = not any(scheduler.has_room(r) for r in range(rank, CLASSES))
        estimate = scheduler.estimate_s(key, 1, rank)
        if not full and now + estimate + self._margin_s <= deadline:
            return None
        router = self._router
        overflow = pipeline.effective_offload == "overflow"
        if overflow and router is not None and router.pick(pipeline.model, deadline - now) is not None:
            return None
        reason = "queue full" if full else f"estimated {estimate * 1000.0:.1f} ms locally"
        return Rejected(
            f"deadline cannot be met: {reason}, {(deadline - now) * 1000.0:.1f} ms left, and no cloud pool can take it",
            retry_after_s=estimate,
        )

    async def run(
        self,
        pipeline: PipelineSpec,
        key: QueueKey,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        rows: int,
        *,
        requested: Sequence[str] | None,
        rank: int,
        deadline: float,
    ) -> Served:
        """Run one request where it can meet `deadline` (loop time); Rejected / Expired (503) otherwise."""
        fits, estimate = self._local_fits(key, rows, rank, deadline)
        if not fits:
            router = self._router
            if pipeline.effective_offload == "overflow" and router is not None:
                remaining = deadline - self._scheduler.now()
                pool = router.pick(pipeline.model, remaining, cheapest=rank == PRIORITY_RANK["best_effort"])
                if pool is not None:
                    try:
                        outputs = await router.infer(
                            pipeline,
                            pool,
                            version=key.version,
                            inputs=inputs,
                            outputs=requested,
                            timeout_s=remaining,
                            rows=rows,
                        )
                        return Served(outputs, "cloud", pool.name)
                    except PoolError as exc:
                        if exc.timed_out:
                            raise Expired(f"deadline expired while offloaded to pool {pool.name}") from exc
                        logger.debug("offload to %s failed, trying local: %s", pool.name, exc)
                        fits, estimate = self._local_fits(key, rows, rank, deadline)
            if not fits:
                budget_ms = (deadline - self._scheduler.now()) * 1000.0
                raise Rejected(
                    f"deadline cannot be met: estimated {estimate * 1000.0:.1f} ms locally, {budget_ms:.1f} ms left, "
                    "and no cloud pool can take it",
                    retry_after_s=estimate,
                )
        outputs = await self._scheduler.submit(key, inputs, rows, rank=rank, deadline=deadline)
        return Served(outputs, "local")


def _drop(task: asyncio.Future[Served]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a late answer's failure is not "never retrieved"


async def answered_by(call: Awaitable[Served], timeout_s: float, name: str) -> Served:
    """`call`'s answer if it comes within `timeout_s`, else Expired at that moment (a safety request is
    refused at its deadline, not answered late); a batch already running finishes and its answer is dropped."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout_s))
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        return task.result()
    task.add_done_callback(_drop)
    raise Expired(f"model {name!r}: no answer by the request's deadline (refused at the deadline, not served late)")
