"""Periodic load reports: live at QoS 0 while the link is up, spooled on disk while it is not.

Order is the invariant: a report goes out live only when the spool is empty; otherwise it joins the
spool's tail, and the drainer sends the spool oldest-first at QoS 1, deleting each record only after its
PUBACK. So reports reach the broker in sequence order, none is lost to an outage (up to the spool's
bound, whose drops are counted), and none is sent twice except after a crash mid-drain, which the hub
dedupes by (boot_id, seq). Everything here runs beside serving; serving never waits on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from edge_agent.fleet.device_load import DeviceLoadSource
from edge_agent.fleet.errors import FleetError
from edge_agent.fleet.mqtt_link import MqttLink
from edge_agent.fleet.seq import SequenceCounter
from edge_agent.fleet.spool import Spool
from edge_agent.fleet.stats import PipelineStatsSource
from protocols.messages import InstalledModel, LoadReport

log = logging.getLogger(__name__)

ModelsSource = Callable[[], Sequence[InstalledModel]]


class TelemetryReporter:
    """Owns the report ticker and the spool drainer; an async context manager."""

    def __init__(
        self,
        link: MqttLink,
        *,
        stats: PipelineStatsSource,
        load: DeviceLoadSource,
        spool: Spool,
        seq: SequenceCounter,
        interval_s: float,
        models: ModelsSource | None = None,
        boot_id: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.link = link
        self.stats = stats
        self.load = load
        self.spool = spool
        self.seq = seq
        self.interval_s = interval_s
        self.models = models
        self.boot_id = boot_id or uuid.uuid4().hex
        self._wall_clock = wall_clock
        self._topic = link.topics.telemetry(link.settings.device_id)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.sent_live = 0
        self.spooled = 0
        self.drained = 0
        self.failed_reports = 0
        link.on_connected(self._on_connected)

    # --- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the ticker and the drainer (idempotent)."""
        if not self._tasks:
            self._wake.set()  # a spool left by a previous run drains as soon as the link is up
            self._tasks = [
                asyncio.create_task(self._tick(), name="telemetry-tick"),
                asyncio.create_task(self._drain(), name="telemetry-drain"),
            ]

    async def aclose(self) -> None:
        """Stop both tasks; spooled reports stay on disk for the next start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- reports -----------------------------------------------------------------------------------

    async def report_once(self) -> LoadReport:
        """Build one report and send or spool it (the ticker calls this every interval)."""
        device = await asyncio.to_thread(self.load.sample)
        report = LoadReport(
            device_id=self.link.settings.device_id,
            boot_id=self.boot_id,
            seq=await asyncio.to_thread(self.seq.next),
            sent_at=self._wall_clock(),
            interval_s=self.interval_s,
            pipelines=tuple(self.stats.snapshot(self.interval_s)),
            device=device,
            models=tuple(self.models()) if self.models is not None else (),
        )
        await self._submit(report.model_dump_json().encode())
        return report

    async def _submit(self, payload: bytes) -> None:
        if self.link.connected and self.spool.empty():
            try:
                await self.link.publish(self._topic, payload, qos=0)
            except FleetError as exc:
                log.debug("live telemetry publish failed (%s): spooling", exc)
            else:
                self.sent_live += 1
                return
        await asyncio.to_thread(self.spool.append, payload)
        self.spooled += 1
        self._wake.set()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.interval_s
        while True:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            # Skip missed ticks (e.g. after a suspend) instead of bursting to catch up.
            deadline = max(deadline + self.interval_s, loop.time())
            try:
                await self.report_once()
            except Exception:  # one bad sample or a full disk must not end telemetry
                self.failed_reports += 1
                log.exception("telemetry report failed")

    # --- spool drain ----------------------------------------------------------------------------------

    async def _on_connected(self) -> None:
        self._wake.set()

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._drain_once()
            except Exception:
                log.exception("telemetry spool drain failed")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _drain_once(self) -> None:
        while self.link.connected:
            record = await asyncio.to_thread(self.spool.oldest)
            if record is None:
                return
            try:
                await self.link.publish(self._topic, record.payload, qos=1)
            except FleetError as exc:
                # The link is down (or the broker refused): keep the record; the next connect wakes us.
                log.info("telemetry drain paused with %s reports spooled: %s", len(self.spool), exc)
                return
            await asyncio.to_thread(self.spool.remove, record.key)
            self.drained += 1
