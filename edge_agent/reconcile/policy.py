"""Apply policies: when a prepared, warm version may be switched to (ApplyPolicy in the desired state).

- immediate: at once.
- safety_idle: once no request of a safety pipeline has arrived or been queued for `safety_idle_ms`.
  Activity is read from public state (a counter of safety requests and their queued rows) by polling;
  with no safety pipeline the device is always idle.
- window: while the UTC time of day is in [window_start_utc, window_end_utc); a window may cross midnight
  (22:00-02:00); start == end means the whole day. The wait re-reads the clock at least every
  `recheck_s`, so a clock step (NTP) is noticed.

Clocks and sleep are injected so the tests drive them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from protocols.messages import ApplyPolicy

__all__ = ["PolicyClock", "PolicyGate", "in_window", "seconds_until_window"]

DAY_S = 86_400.0
# (safety requests seen so far, whether any is queued or running now).
ActivityProbe = Callable[[], tuple[int, bool]]


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def seconds_until_window(policy: ApplyPolicy, unix_time: float) -> float:
    """0 inside the window, else seconds until it opens (UTC)."""
    if policy.window_start_utc is None or policy.window_end_utc is None:
        return 0.0
    start = _minutes(policy.window_start_utc) * 60.0
    end = _minutes(policy.window_end_utc) * 60.0
    now = unix_time % DAY_S
    if start == end:
        return 0.0
    inside = start <= now < end if start < end else (now >= start or now < end)
    if inside:
        return 0.0
    return (start - now) % DAY_S


def in_window(policy: ApplyPolicy, unix_time: float) -> bool:
    """True if a window policy allows switching at `unix_time`."""
    return seconds_until_window(policy, unix_time) == 0.0


@dataclass
class PolicyClock:
    """Wall clock (for windows), monotonic clock (for idle time) and sleep; real ones by default."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)


class PolicyGate:
    """Answers "may we switch now?" and waits until we may."""

    def __init__(
        self,
        safety_activity: ActivityProbe | None = None,
        clock: PolicyClock | None = None,
        *,
        poll_s: float = 0.05,
        recheck_s: float = 30.0,
    ) -> None:
        self.safety_activity = safety_activity
        self.clock = clock or PolicyClock()
        self.poll_s = poll_s
        self.recheck_s = recheck_s

    def allowed_now(self, policy: ApplyPolicy) -> bool:
        """True if the switch may happen without waiting (safety_idle always waits one idle period)."""
        if policy.mode == "window":
            return in_window(policy, self.clock.wall())
        if policy.mode == "safety_idle":
            return self.safety_activity is None
        return True

    async def wait(self, policy: ApplyPolicy) -> None:
        """Return once the policy allows the switch."""
        if policy.mode == "window":
            while (delay := seconds_until_window(policy, self.clock.wall())) > 0:
                await self.clock.sleep(min(delay, self.recheck_s))
        elif policy.mode == "safety_idle" and self.safety_activity is not None:
            await self._wait_idle(policy.safety_idle_ms / 1000.0)

    async def _wait_idle(self, idle_s: float) -> None:
        probe = self.safety_activity
        assert probe is not None  # checked by the caller
        last, _busy = probe()
        quiet_since = self.clock.monotonic()
        step = min(self.poll_s, idle_s / 4)
        while self.clock.monotonic() - quiet_since < idle_s:
            await self.clock.sleep(step)
            seen, busy = probe()
            if busy or seen != last:
                last = seen
                quiet_since = self.clock.monotonic()
