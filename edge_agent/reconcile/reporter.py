"""Publishes the reconciler's ReportedState (retained, QoS 1) and DeviceEvents (QoS 1) without blocking it.

The reconciler calls `report()` / `event()` (synchronous, never wait on the broker); one owned task sends.
Only the latest ReportedState matters, so reports coalesce (download progress included) and are sent at
most every `min_interval_s`. Events queue (bounded: the oldest are dropped while the broker is away). After
every (re)connect the latest report is sent again, in case the broker lost the retained copy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol

from pydantic import BaseModel

from edge_agent.fleet.errors import FleetError
from protocols.messages import DeviceEvent, ModelReport, ReportedState
from protocols.topics import Topics

__all__ = ["ReportLink", "Reporter"]

log = logging.getLogger(__name__)

Level = Literal["info", "warning", "error"]


class ReportLink(Protocol):
    """What the reporter needs of the MQTT link (edge_agent.fleet.mqtt_link.DeviceLink)."""

    @property
    def connected(self) -> bool:
        """True while the link is up."""
        ...

    async def publish(
        self,
        topic: str,
        payload: bytes | str | BaseModel,
        *,
        qos: Literal[0, 1] = 0,
        retain: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Publish; QoS 1 waits for PUBACK."""
        ...

    def on_connected(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Register a callback run after each connect."""
        ...


class Reporter:
    """Latest-wins ReportedState plus an event queue, sent by one owned task."""

    def __init__(
        self,
        link: ReportLink,
        topics: Topics,
        device_id: str,
        *,
        clock: Callable[[], float] = time.time,
        min_interval_s: float = 0.25,
        max_events: int = 256,
    ) -> None:
        self.link = link
        self.device_id = device_id
        self._reported_topic = topics.reported(device_id)
        self._events_topic = topics.events(device_id)
        self._clock = clock
        self._min_interval_s = min_interval_s
        self._latest: ReportedState | None = None
        self._sent: ReportedState | None = None
        self._events: collections.deque[DeviceEvent] = collections.deque(maxlen=max_events)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        link.on_connected(self._on_connected)

    @property
    def latest(self) -> ReportedState | None:
        """The last report made (sent or not)."""
        return self._latest

    def report(self, revision: int, models: Sequence[ModelReport], trials: Sequence[ModelReport] = ()) -> None:
        """Replace the state to publish (`trials`: the candidates of the revision's trials)."""
        converged = bool(models) and all(m.state == "active" for m in (*models, *trials))
        self._latest = ReportedState(
            device_id=self.device_id,
            revision=revision,
            updated_at=self._clock(),
            models=tuple(models),
            trials=tuple(trials),
            converged=converged,
        )
        self._wake.set()

    def event(
        self,
        level: Level,
        kind: str,
        message: str,
        *,
        model: str | None = None,
        version: str | None = None,
        revision: int | None = None,
    ) -> None:
        """Queue an event on `events`."""
        self._events.append(
            DeviceEvent(
                device_id=self.device_id,
                at=self._clock(),
                level=level,
                kind=kind,
                message=message[:2000],
                model=model,
                version=version,
                revision=revision,
            )
        )
        self._wake.set()

    def start(self) -> None:
        """Start the sender task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="reconcile-reporter")

    async def aclose(self, flush_timeout_s: float = 2.0) -> None:
        """Try to send what is pending (bounded), then stop the sender."""
        if self._task is None:
            return
        with contextlib.suppress(FleetError, TimeoutError):
            async with asyncio.timeout(flush_timeout_s):
                await self._send_pending()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _on_connected(self) -> None:
        self._sent = None
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.link.connected:
                continue  # the on-connected callback wakes us
            try:
                await self._send_pending()
            except (FleetError, TimeoutError) as exc:
                log.warning("reported state/events not sent yet: %s", exc)
                await asyncio.sleep(1.0)
                self._wake.set()
                continue
            await asyncio.sleep(self._min_interval_s)

    async def _send_pending(self) -> None:
        latest = self._latest
        if latest is not None and latest is not self._sent:
            # Without trials the field is left out: hubs older than trials still read the report.
            payload = latest.model_dump_json(exclude=None if latest.trials else {"trials"})
            await self.link.publish(self._reported_topic, payload, qos=1, retain=True)
            self._sent = latest
            self.published += 1
        while self._events:
            await self.link.publish(self._events_topic, self._events[0], qos=1)
            self._events.popleft()
