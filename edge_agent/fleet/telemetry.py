"""Periodic load reports, kept on disk until the hub acknowledges them end to end.

Every report is written to the spool (fsynced) and then sent at QoS 1 by one sender task, oldest first, so
reports leave in sequence order. A PUBACK is not enough to forget a report (a broker restart loses what it
had not delivered to the hub, docs/telemetry.md): a record is deleted only when a `TelemetryAck` from the hub
on `telemetry/ack` names its (boot_id, seq). Unacknowledged reports are sent again, go-back-N style:

- on every connect, everything unacknowledged counts as unsent, and the sender *probes*: it sends only the
  oldest report and waits for an ack (so a backlog is not sent into a broker whose hub subscription is not
  back yet, and arrives in order once it is);
- any ack ends probing; then every unsent report goes out in order, new ones as they are made;
- when the oldest unacknowledged report was sent `resend_after_s` ago (default 2.5 report intervals)
  without an ack, all of them count as unsent again and the sender probes, with the wait doubling per
  fruitless probe up to `max_resend_s`: a hub that is away costs one message per wait, not a storm.

The hub dedupes by (device, boot_id, seq), so a resend is harmless. The spool's bounds hold: when it is
full the oldest reports are dropped, acknowledged or not, and counted in `Spool.dropped` (exported as
`edgefleet_fleet_telemetry_reports_total{outcome="dropped"}`). Everything here runs beside serving;
serving never waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from pydantic import ValidationError

from edge_agent.fleet.device_load import DeviceLoadSource
from edge_agent.fleet.errors import FleetError
from edge_agent.fleet.mqtt_link import DeviceLink
from edge_agent.fleet.outbox import Outbox, Pending
from edge_agent.fleet.seq import SequenceCounter
from edge_agent.fleet.spool import Spool
from edge_agent.serving.stats import PipelineStatsSource
from protocols.messages import InstalledModel, LoadReport, TelemetryAck

log = logging.getLogger(__name__)

ModelsSource = Callable[[], Sequence[InstalledModel]]
RESEND_INTERVALS = 2.5  # default resend_after_s, in report intervals
PUBLISH_RETRY_S = 1.0


class TelemetryReporter:
    """Owns the report ticker and the sender; an async context manager."""

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
        resend_after_s: float | None = None,
        max_resend_s: float = 60.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.link = link
        self.stats = stats
        self.load = load
        self.spool = spool
        self.outbox = Outbox(spool)
        self.seq = seq
        self.interval_s = interval_s
        self.models = models
        self.boot_id = boot_id or uuid.uuid4().hex
        self.resend_after_s = resend_after_s or RESEND_INTERVALS * interval_s
        self.max_resend_s = max(max_resend_s, self.resend_after_s)
        self._wall_clock = wall_clock
        device_id = link.settings.device_id
        self._topic = link.topics.telemetry(device_id)
        self._device_id = device_id
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._probing = True
        self._rto = self.resend_after_s  # current wait for an ack; doubles per fruitless probe
        self._acked_keys: list[int] = []
        self._retry_at = 0.0
        self.spooled = 0  # reports made and written to the spool (all of them)
        self.sent = 0  # first sends on a connection
        self.resent = 0  # sends of a report already sent once by this process
        self.acked = 0  # reports the hub acknowledged (then deleted)
        self.timeouts = 0  # times the oldest report waited `resend_after_s` (or longer, backing off) in vain
        self.bad_acks = 0  # ack messages that failed validation or named another device
        self.failed_reports = 0
        link.on_connected(self._on_connected)
        link.subscribe(link.topics.telemetry_ack(device_id), self._on_ack)

    # --- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the ticker and the sender (idempotent)."""
        if not self._tasks:
            self._wake.set()  # reports left by a previous run go out as soon as the link is up
            self._tasks = [
                asyncio.create_task(self._tick(), name="telemetry-tick"),
                asyncio.create_task(self._send_loop(), name="telemetry-send"),
            ]

    async def aclose(self) -> None:
        """Stop both tasks; unacknowledged reports stay on disk for the next start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await asyncio.to_thread(self._remove_acked)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def unacked(self) -> int:
        """Reports on disk that the hub has not acknowledged."""
        return len(self.outbox)

    # --- reports -----------------------------------------------------------------------------------

    async def report_once(self) -> LoadReport:
        """Build one report, spool it and wake the sender (the ticker calls this every interval)."""
        device = await asyncio.to_thread(self.load.sample)
        report = LoadReport(
            device_id=self._device_id,
            boot_id=self.boot_id,
            seq=await asyncio.to_thread(self.seq.next),
            sent_at=self._wall_clock(),
            interval_s=self.interval_s,
            pipelines=tuple(self.stats.snapshot(self.interval_s)),
            device=device,
            models=tuple(self.models()) if self.models is not None else (),
        )
        await asyncio.to_thread(self.outbox.add, report.model_dump_json().encode(), report.boot_id, report.seq)
        self.spooled += 1
        self._wake.set()
        return report

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

    # --- acknowledgements (on the loop, from the link's dispatch) -----------------------------------

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = TelemetryAck.model_validate_json(payload)
            if ack.device_id != self._device_id:
                raise ValueError(f"ack for {ack.device_id!r}")
        except (ValidationError, ValueError) as exc:
            self.bad_acks += 1
            log.warning("telemetry ack dropped: %s", str(exc)[:300])
            return
        keys = self.outbox.ack(ack.boot_id, ack.ranges)
        self.acked += len(keys)
        self._acked_keys.extend(keys)
        # The hub is listening: stop probing, wait the normal time again.
        self._probing = False
        self._rto = self.resend_after_s
        self._wake.set()

    async def _on_connected(self) -> None:
        self.outbox.resend_all()
        self._probing, self._rto = True, self.resend_after_s
        self._wake.set()

    def _remove_acked(self) -> None:
        keys, self._acked_keys = self._acked_keys, []
        for key in keys:
            self.spool.remove(key)

    # --- the sender ----------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # While the link is down only a connect (or a new report) wakes the sender: nothing can go out.
            timeout = self._next_due(loop.time()) if self.link.connected else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                if self._acked_keys:
                    await asyncio.to_thread(self._remove_acked)
                if self.link.connected:
                    await self._send_due(loop)
            except Exception:
                log.exception("telemetry sender failed")
                self._retry_at = loop.time() + PUBLISH_RETRY_S

    def _next_due(self, now: float) -> float | None:
        oldest = self.outbox.oldest()
        times = [self._retry_at] if self._retry_at > now else []
        if oldest is not None and oldest.sent_at is not None:
            times.append(oldest.sent_at + self._rto)
        return max(0.0, min(times) - now) if times else None

    async def _send_due(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        if now < self._retry_at:
            return
        oldest = self.outbox.oldest()
        if oldest is not None and oldest.sent_at is not None and now - oldest.sent_at >= self._rto:
            # No ack in time: maybe lost between broker and hub. Go back to the oldest and probe.
            self.timeouts += 1
            if self._probing:
                self._rto = min(self._rto * 2, self.max_resend_s)
            self._probing = True
            self.outbox.resend_all()
        if self._probing:
            if oldest is not None and oldest.sent_at is None:
                await self._send(oldest, loop)
            return
        for entry in self.outbox.unsent():
            if not self.link.connected or self._probing or not await self._send(entry, loop):
                return

    async def _send(self, entry: Pending, loop: asyncio.AbstractEventLoop) -> bool:
        payload = await asyncio.to_thread(self.spool.read, entry.key)
        if payload is None:
            self.outbox.forget(entry)  # dropped (spool full) or unreadable meanwhile
            return True
        try:
            await self.link.publish(self._topic, payload, qos=1)
        except FleetError as exc:
            # Link down (the next connect wakes us) or refused: retry later, the report stays on disk.
            log.info("telemetry send paused with %s reports unacknowledged: %s", len(self.outbox), exc)
            self._retry_at = loop.time() + PUBLISH_RETRY_S
            return False
        self.outbox.mark_sent(entry, loop.time())
        if entry.sends > 1:
            self.resent += 1
        else:
            self.sent += 1
        return True
