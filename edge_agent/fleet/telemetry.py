"""Periodic load reports: sent live while the link is up, spooled on disk while it is not.

Order is the invariant: a report goes out live only when the spool is empty; otherwise it joins the
spool's tail, and the drainer sends the spool oldest-first at QoS 1, deleting each record only after its
PUBACK. So reports reach the broker in sequence order, none is lost to an outage (up to the spool's
bound, whose drops are counted), and none is sent twice except after a crash mid-drain, which the hub
dedupes by (boot_id, seq). Everything here runs beside serving; serving never waits on it.

Live reports default to QoS 1 *without waiting* (`live_qos=1`): a QoS 0 report written in the instant
the broker dies is lost without trace, which the fleet issue's "none lost" forbids. Each live report is
kept in memory until its PUBACK; if the connection drops first it is moved to the spool, ahead of any
newer report. `live_qos=0` gives plain fire-and-forget (the cheaper choice where an occasional loss at
a disconnect is acceptable).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Literal, Self

from edge_agent.fleet.device_load import DeviceLoadSource
from edge_agent.fleet.errors import FleetError
from edge_agent.fleet.mqtt_link import DeviceLink
from edge_agent.fleet.seq import SequenceCounter
from edge_agent.fleet.spool import Spool
from edge_agent.serving.stats import PipelineStatsSource
from protocols.messages import InstalledModel, LoadReport

log = logging.getLogger(__name__)

ModelsSource = Callable[[], Sequence[InstalledModel]]


class TelemetryReporter:
    """Owns the report ticker and the spool drainer; an async context manager."""

    def __init__(
        self,
        link: DeviceLink,
        *,
        stats: PipelineStatsSource,
        load: DeviceLoadSource,
        spool: Spool,
        seq: SequenceCounter,
        interval_s: float,
        models: ModelsSource | None = None,
        boot_id: str | None = None,
        live_qos: Literal[0, 1] = 1,
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
        self.live_qos = live_qos
        self._inflight: dict[int, tuple[bytes, asyncio.Task[None]]] = {}
        self._rescue_lock = asyncio.Lock()
        self.rescued = 0
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
        """Stop both tasks; spooled (and still unacknowledged) reports stay on disk for the next start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._inflight:
            await asyncio.wait([t for _, t in self._inflight.values()], timeout=2.0)
        for seq, (payload, task) in list(self._inflight.items()):
            del self._inflight[seq]
            if not (task.done() and not task.cancelled() and task.exception() is None):
                task.cancel()
                await asyncio.to_thread(self.spool.append, payload)

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
        await self._submit(report.seq, report.model_dump_json().encode())
        return report

    async def _submit(self, seq: int, payload: bytes) -> None:
        await self._rescue()
        if self.link.connected and self.spool.empty():
            try:
                if self.live_qos == 0:
                    await self.link.publish(self._topic, payload, qos=0)
                else:
                    task = self.link.publish_nowait(self._topic, payload, qos=1)
                    self._inflight[seq] = (payload, task)
                    task.add_done_callback(self._live_done)
            except FleetError as exc:
                log.debug("live telemetry publish failed (%s): spooling", exc)
            else:
                self.sent_live += 1
                return
        await asyncio.to_thread(self.spool.append, payload)
        self.spooled += 1
        self._wake.set()

    def _live_done(self, task: asyncio.Task[None]) -> None:
        # Retrieve the outcome here (no "exception never retrieved"); failures wake the drainer, which
        # moves the report back to the spool. Acknowledged ones are forgotten by the next `_rescue`.
        if task.cancelled() or task.exception() is not None:
            self._wake.set()

    async def _rescue(self) -> None:
        """Move live reports whose connection dropped before PUBACK to the spool, oldest first."""
        async with self._rescue_lock:
            for seq, (payload, task) in list(self._inflight.items()):
                if not task.done():
                    break  # acks arrive in order; later ones are still in flight too
                del self._inflight[seq]
                if task.cancelled() or task.exception() is not None:
                    await asyncio.to_thread(self.spool.append, payload)
                    self.spooled += 1
                    self.rescued += 1

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
        await self._rescue()
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
