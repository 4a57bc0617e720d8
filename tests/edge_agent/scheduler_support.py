"""Helpers of the scheduler's tests: an injected clock (monotonic time that moves only when told), queue keys."""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.scheduler.queue import QueueKey


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
