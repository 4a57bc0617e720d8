"""A short-lived cache of fleet-wide figures: the overview's load per pipeline reads every online device's
last report (5,000 JSON documents at 5,000 devices), while ingest rewrites those reports at most every 2 s
(cloud_hub/ingest/writer.py, load_every_s). Within that window every page, stream tick and operator can
share one computation."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class TtlCache(Generic[T]):
    """`await cache.get(key, compute)`: the value computed less than `ttl_s` ago, else a fresh one.

    Bounded to `max_keys` (least recently computed dropped first); `ttl_s` 0 disables it."""

    def __init__(self, ttl_s: float, *, max_keys: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self.clock = clock
        self._values: OrderedDict[Hashable, tuple[float, T]] = OrderedDict()

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        """The cached value of `key`, or `compute()`'s result, stored."""
        now = self.clock()
        found = self._values.get(key)
        if found is not None and now - found[0] < self.ttl_s:
            return found[1]
        value = await compute()
        if self.ttl_s > 0:
            self._values[key] = (now, value)
            self._values.move_to_end(key)
            while len(self._values) > self.max_keys:
                self._values.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every value (after an operator action that changes the figures)."""
        self._values.clear()
