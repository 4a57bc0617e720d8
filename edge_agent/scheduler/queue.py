"""Queued requests of one model, one FIFO per priority class, and how a batch is cut from them and run.

A `Request` may carry several rows (its batch axis); a batch concatenates whole requests of one model and
one class along axis 0, never splitting one, up to a row limit, and its outputs are split back by row counts.
Classes are never mixed in a batch: a safety request must not wait for lower-class rows to run with it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from edge_agent.errors import Unavailable

Tensors = dict[str, np.ndarray[Any, Any]]
RunBatch = Callable[[Mapping[str, np.ndarray[Any, Any]]], Mapping[str, np.ndarray[Any, Any]]]

CLASSES = 3  # ranks: 0 safety, 1 standard, 2 best_effort (protocols.pipeline.PRIORITY_RANK)


class QueueKey(NamedTuple):
    """The queue of one model version; `str()` is "name:version" (metric labels, logs, messages)."""

    model: str
    version: str

    def __str__(self) -> str:
        return f"{self.model}:{self.version}"


class Expired(Unavailable):
    """A queued request reached its deadline before it could run; it never runs (HTTP 503)."""


class Request:
    """One caller's inputs, its class rank and absolute deadline, and the Future its answer goes to."""

    # __weakref__: the expiry heap refers to requests weakly, so a finished request (and its input
    # tensors, often views of a large request body) is freed at once, not when its deadline passes.
    __slots__ = ("__weakref__", "deadline", "enqueued_at", "future", "inputs", "queued", "rank", "rows", "seq")

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        rows: int,
        future: asyncio.Future[Tensors],
        enqueued_at: float,
        *,
        rank: int = 1,
        deadline: float | None = None,
        seq: int = 0,
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.future = future
        self.enqueued_at = enqueued_at
        self.rank = rank
        self.deadline = deadline
        self.seq = seq  # arrival order across every queue of the lane (FIFO within a class)
        self.queued = True  # False once it left its queue (cut into a batch, expired, cancelled, failed)


class ModelQueue:
    """One model's queued requests: a FIFO per class, with the batch limits of that model."""

    __slots__ = (
        "class_counts",
        "classes",
        "closed",
        "inflight",
        "input_names",
        "key",
        "max_batch_size",
        "max_queue_delay_s",
        "rows",
        "run",
    )

    def __init__(
        self,
        key: QueueKey,
        run: RunBatch,
        input_names: tuple[str, ...],
        max_batch_size: int,
        max_queue_delay_s: float,
        *,
        class_counts: list[int] | None = None,
    ) -> None:
        self.key = key
        self.run = run
        self.input_names = input_names
        # 0 = the model has no batch axis: every request runs alone.
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.classes: tuple[deque[Request], ...] = tuple(deque() for _ in range(CLASSES))
        self.rows = [0] * CLASSES  # live (queued) rows per class
        # Queued requests per class across every queue of the lane (shared with the scheduler).
        self.class_counts = class_counts if class_counts is not None else [0] * CLASSES
        self.inflight = 0  # batches of this queue handed to a lane
        self.closed = False

    def push(self, request: Request) -> None:
        """Append a request to its class."""
        self.classes[request.rank].append(request)
        self.rows[request.rank] += request.rows
        self.class_counts[request.rank] += 1

    def drop(self, request: Request) -> None:
        """Account for a request that leaves the queue; it is popped lazily when it reaches the head."""
        if request.queued:
            request.queued = False
            self.rows[request.rank] -= request.rows
            self.class_counts[request.rank] -= 1

    def total_rows(self) -> int:
        """Live rows queued in every class."""
        return sum(self.rows)

    def has_items(self) -> bool:
        """True if any class holds a live request."""
        return any(self.rows)

    def head(self, rank: int) -> Request | None:
        """Oldest live request of a class; dead heads (expired, cancelled) are popped on the way."""
        items = self.classes[rank]
        while items:
            first = items[0]
            if first.queued and not first.future.done():
                return first
            items.popleft()
            self.drop(first)
        return None

    def full(self, rank: int) -> bool:
        """True if a batch of max size can be cut from a class now."""
        return self.max_batch_size == 0 or self.rows[rank] >= self.max_batch_size

    def take(self, rank: int, limit: int, now: float, min_run_s: float) -> list[Request]:
        """Pop whole requests of a class up to `limit` rows (at least one live one).

        Requests whose deadline falls before `now + min_run_s` (they cannot finish in time) are answered
        503 and never run.
        """
        items = self.classes[rank]
        batch: list[Request] = []
        rows = 0
        while items:
            head = items[0]
            if not head.queued or head.future.done():
                items.popleft()
                self.drop(head)
                continue
            if head.deadline is not None and head.deadline < now + min_run_s:
                items.popleft()
                self.drop(head)
                head.future.set_exception(Expired("request deadline expired while queued", retry_after_s=1.0))
                continue
            if batch and (limit == 0 or rows + head.rows > limit):
                break
            items.popleft()
            self.drop(head)
            batch.append(head)
            rows += head.rows
        return batch

    def work_s(self, rank: int, extra_rows: int, batch_s: Callable[[int], float]) -> float:
        """Estimated run time of this class's queued rows (plus `extra_rows`) in batches of max size."""
        rows = self.rows[rank] + extra_rows
        if rows <= 0:
            return 0.0
        if self.max_batch_size == 0:
            return rows * batch_s(1)
        full, rest = divmod(rows, self.max_batch_size)
        return full * batch_s(self.max_batch_size) + (batch_s(rest) if rest else 0.0)

    def fail_all(self, error: Exception) -> None:
        """Fail every queued request (shutdown)."""
        for items in self.classes:
            while items:
                request = items.popleft()
                self.drop(request)
                if not request.future.done():
                    request.future.set_exception(error)


def run_batch(queue: ModelQueue, batch: list[Request]) -> list[Tensors]:
    """Concatenate the requests' inputs, run them as one batch, and split the outputs back by rows."""
    if len(batch) == 1:
        return [dict(queue.run(batch[0].inputs))]
    feeds = {name: np.concatenate([r.inputs[name] for r in batch]) for name in queue.input_names}
    outputs = queue.run(feeds)
    total = sum(r.rows for r in batch)
    for name, array in outputs.items():
        if array.shape[:1] != (total,):
            raise ValueError(f"output {name!r} has shape {array.shape}, expected {total} rows")
    results: list[Tensors] = []
    start = 0
    for r in batch:
        stop = start + r.rows
        results.append({name: array[start:stop] for name, array in outputs.items()})
        start = stop
    return results
