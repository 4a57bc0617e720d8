"""Failed-attempt limits per source: claim guessing costs a CSR check and a transaction per try.

A token bucket per source address: each failed attempt (an unknown, used-up or expired claim) takes a
token; with none left, every request from that source is answered 429 with Retry-After, before any work,
until the bucket refills (`refill_per_s`). Successful attempts cost nothing. The table is bounded
(`max_sources`, least recently seen dropped first), so a spoofed-address flood cannot grow it.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from cloud_hub.errors import TooManyRequests


class FailureLimiter:
    """`check(source)` before the work (raises TooManyRequests), `failed(source)` after a failure."""

    def __init__(
        self,
        burst: int = 10,
        refill_per_s: float = 1.0,
        *,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.refill_per_s = refill_per_s
        self.max_sources = max_sources
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, at)

    def _tokens(self, source: str) -> float:
        tokens, at = self._buckets.get(source, (float(self.burst), self.clock()))
        return min(float(self.burst), tokens + (self.clock() - at) * self.refill_per_s)

    def check(self, source: str) -> None:
        """Raise TooManyRequests when `source` has no failed attempt left."""
        tokens = self._tokens(source)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / self.refill_per_s)
            raise TooManyRequests(f"too many failed provisioning attempts; retry in {wait} s", wait)

    def failed(self, source: str) -> None:
        """Take one token from `source` for a failed attempt."""
        tokens = max(0.0, self._tokens(source) - 1)
        self._buckets[source] = (tokens, self.clock())
        self._buckets.move_to_end(source)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)


class DeviceRate:
    """Per-device token bucket for messages: `allow(device_id)` takes a token, False when none is left.

    Keyed by known, active device ids only (the caller checks first), so the table is as big as the fleet."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, device_id: str) -> bool:
        """Take one token from `device_id`'s bucket; False (take nothing) when it is empty."""
        now = self.clock()
        tokens, at = self._buckets.get(device_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
        if tokens < 1:
            self._buckets[device_id] = (tokens, now)
            return False
        self._buckets[device_id] = (tokens - 1, now)
        return True
