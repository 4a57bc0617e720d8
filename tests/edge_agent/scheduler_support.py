"""Helpers of the scheduler's tests: an injected clock (monotonic time that moves only when told), queue keys,
a recording runtime, fixed service times."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edge_agent.scheduler.estimates import ServiceTimes
from edge_agent.scheduler.queue import QueueKey

Arrays = Mapping[str, np.ndarray[Any, Any]]
SAFETY, STANDARD, BEST_EFFORT = 0, 1, 2


def qk(model: str) -> QueueKey:
    """The queue of version 1 of a test model."""
    return QueueKey(model, "1")


class FakeClock:
    """Monotonic time that moves only when told; timers fire on `advance`."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object], /) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = sorted((t for t in self.timers if t.when <= self.now and not t.cancelled), key=lambda t: t.when)
        self.timers = [t for t in self.timers if t not in due]
        for timer in due:
            timer.callback()


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Runner:
    """A runtime `run` shared by several models: y = x + tag, recording (tag, rows, thread) per batch.

    The first batch blocks on `gate` (when set) so tests can fill the queues while the lane is busy.
    """

    def __init__(self, log: list[tuple[str, int, str]], tag: str, gate: threading.Event | None = None) -> None:
        self.log = log
        self.tag = tag
        self.gate = gate

    def __call__(self, inputs: Arrays) -> dict[str, np.ndarray[Any, Any]]:
        if self.gate is not None:
            self.gate.wait(5)
        self.log.append((self.tag, int(inputs["x"].shape[0]), threading.current_thread().name))
        return {"y": inputs["x"] + 1}


class FixedTimes(ServiceTimes):
    """Service times set by the test: measured batch durations are ignored (the lane runs in microseconds)."""

    def __init__(self, times: dict[QueueKey, dict[int, float]]) -> None:
        super().__init__()
        for key, by_rows in times.items():
            for n, seconds in by_rows.items():
                super().observe(key, n, seconds)

    def observe(self, key: QueueKey, rows: int, seconds: float) -> None:
        pass


def rows(n: int, value: float = 0.0) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.full((n, 1), value, dtype=np.float32)}


async def settle(rounds: int = 10) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)
