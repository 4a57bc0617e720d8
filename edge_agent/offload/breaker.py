"""A circuit breaker per cloud pool: closed -> open on failures -> half-open probes -> closed."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from edge_agent.config import BreakerConfig

__all__ = ["BreakerState", "CircuitBreaker"]

logger = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after `consecutive_failures` in a row or an error rate over a window; probes after a cool-down.

    closed: every request passes. open: none pass until the cool-down is over and a background health
    probe succeeds (`probe_ok`), which makes it half-open. half_open: up to `half_open_probes` requests
    at once; the first success closes it, a failure opens it again for another cool-down.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self._config = config
        self._clock = clock
        self._on_change = on_change
        self.state: BreakerState = "closed"
        self._consecutive = 0
        self._window: deque[bool] = deque(maxlen=config.window)
        self._opened_at = 0.0
        self._probes = 0

    def available(self) -> bool:
        """True if a request would be let through now (without taking a probe slot)."""
        if self.state == "closed":
            return True
        return self.state == "half_open" and self._probes < self._config.half_open_probes

    def acquire(self) -> bool | None:
        """Let one request through: None = refused, True = it is a half-open probe, False = normal."""
        if self.state == "closed":
            return False
        if self.state == "half_open" and self._probes < self._config.half_open_probes:
            self._probes += 1
            return True
        return None

    def record(self, ok: bool, probe: bool) -> None:
        """The outcome of a request let through by `acquire`."""
        if probe:
            self._probes = max(0, self._probes - 1)
        if self.state == "half_open":
            if ok:
                self._set("closed")
            elif probe:
                self._open()
            return
        if self.state != "closed":
            return
        self._window.append(ok)
        if ok:
            self._consecutive = 0
            return
        self._consecutive += 1
        failures = self._window.count(False)
        if self._consecutive >= self._config.consecutive_failures or (
            len(self._window) >= self._config.min_requests and failures / len(self._window) >= self._config.error_rate
        ):
            self._open()

    def release(self, probe: bool) -> None:
        """A request let through ended with no verdict on the pool's health (e.g. the pool was busy)."""
        if probe:
            self._probes = max(0, self._probes - 1)

    def cooled_down(self) -> bool:
        """True if open and the cool-down is over: time for a health probe."""
        return self.state == "open" and self._clock() >= self._opened_at + self._config.open_s

    def probe_ok(self) -> None:
        """A background health probe succeeded: an open breaker becomes half-open."""
        if self.state == "open":
            self._set("half_open")

    def probe_failed(self) -> None:
        """A background health probe failed: stay open for another cool-down."""
        if self.state == "open":
            self._opened_at = self._clock()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set("open")

    def _set(self, state: BreakerState) -> None:
        if state == self.state:
            return
        logger.warning("pool %s: circuit breaker %s -> %s", self.name, self.state, state)
        self.state = state
        self._probes = 0
        if state == "closed":
            self._consecutive = 0
            self._window.clear()
        if self._on_change is not None:
            self._on_change(self.name, state)
