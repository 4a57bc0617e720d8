"""Queued requests of one model and how a batch is cut from them and run.

A `Request` may carry several rows (its batch axis); a batch concatenates whole requests along axis 0,
never splitting one, up to the model's max batch size, and its outputs are split back by row counts.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Tensors = dict[str, np.ndarray[Any, Any]]
RunBatch = Callable[[Mapping[str, np.ndarray[Any, Any]]], Mapping[str, np.ndarray[Any, Any]]]


class Request:
    """One caller's inputs and the Future its answer goes to.

    `priority` and `deadline` are carried for the cross-model priority scheduler (issue 4); the per-model
    FIFO batcher ignores them.
    """

    __slots__ = ("deadline", "enqueued_at", "future", "inputs", "priority", "rows")

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        rows: int,
        future: asyncio.Future[Tensors],
        enqueued_at: float,
        *,
        priority: int = 0,
        deadline: float | None = None,
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.future = future
        self.enqueued_at = enqueued_at
        self.priority = priority
        self.deadline = deadline


class ModelQueue:
    """FIFO of one model's requests, with the batch limits of that model."""

    __slots__ = (
        "closed",
        "inflight",
        "input_names",
        "items",
        "key",
        "max_batch_size",
        "max_queue_delay_s",
        "rows",
        "run",
    )

    def __init__(
        self,
        key: str,
        run: RunBatch,
        input_names: tuple[str, ...],
        max_batch_size: int,
        max_queue_delay_s: float,
    ) -> None:
        self.key = key
        self.run = run
        self.input_names = input_names
        # 0 = the model has no batch axis: every request runs alone.
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.items: deque[Request] = deque()
        self.rows = 0
        self.inflight = 0  # batches of this queue handed to the lane
        self.closed = False

    def push(self, request: Request) -> None:
        """Append a request."""
        self.items.append(request)
        self.rows += request.rows

    def full(self) -> bool:
        """True if a batch of max size can be cut now."""
        return self.max_batch_size == 0 or self.rows >= self.max_batch_size

    def ready_at(self) -> float:
        """Loop time at which the oldest request has waited max_queue_delay (queue must be non-empty)."""
        return self.items[0].enqueued_at + self.max_queue_delay_s

    def take(self) -> list[Request]:
        """Pop whole requests up to max_batch_size rows (at least one), skipping cancelled ones."""
        items = self.items
        batch: list[Request] = []
        rows = 0
        limit = self.max_batch_size
        while items:
            head = items[0]
            if head.future.done():  # cancelled by a caller that went away: never run it
                items.popleft()
                self.rows -= head.rows
                continue
            if batch and (limit == 0 or rows + head.rows > limit):
                break
            items.popleft()
            self.rows -= head.rows
            batch.append(head)
            rows += head.rows
        return batch


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
