"""Batched ingest writes: collect rows for up to `max_delay_s` or `max_rows`, then one transaction."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pydantic_core

from cloud_hub.metrics import HubMetrics
from cloud_hub.store import Store, devices, telemetry
from cloud_hub.store.summary import TelemetrySummary, encode_summary
from protocols.messages import LoadReport

log = logging.getLogger(__name__)

# (device_id, boot_id, seq, sent_at, received_at, pipeline summary): one telemetry row before encoding.
ReportRow = tuple[str, str, int, float, float, TelemetrySummary]


class BatchWriter:
    """Buffers telemetry rows and per-device column updates; `run()` flushes them in batches.

    Adding is synchronous (called from the dispatcher for every message); flushing runs in the owned
    background task, so the event loop keeps reading MQTT while the database works.
    """

    def __init__(
        self,
        store: Store,
        metrics: HubMetrics,
        *,
        max_rows: int = 1000,
        max_delay_s: float = 0.2,
        max_pending_rows: int = 200_000,
        retention_s: float = 86_400.0,
        prune_every_s: float = 60.0,
        load_every_s: float = 2.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.max_pending_rows = max_pending_rows
        self.retention_s = retention_s
        self.prune_every_s = prune_every_s
        self.load_every_s = load_every_s
        self._rows: list[ReportRow] = []
        self._updates: dict[str, dict[str, Any]] = {}
        # Latest report per device: turned into a devices-row update at most every `load_every_s`
        # (history is in the telemetry rows; the row only needs the newest figures).
        self._loads: dict[str, tuple[LoadReport, float, TelemetrySummary]] = {}
        self._next_loads = 0.0
        self._has_data = asyncio.Event()
        self._full = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # Broker links acknowledging after commit (BrokerLink.take_acks): taken when a flush takes its batch,
        # released once that batch is written, so a crash never loses a message the broker counts delivered.
        self.ack_sources: list[Callable[[], Callable[[], None]]] = []
        # Told every committed batch of telemetry rows (AckPublisher.committed: end-to-end acks to devices).
        self.on_committed: Callable[[list[ReportRow]], None] | None = None

    # --- producers (sync, hot path) -----------------------------------------------------------------

    def add_report(self, row: ReportRow) -> None:
        """Queue one telemetry row."""
        if len(self._rows) >= self.max_pending_rows:
            self.metrics.drops["backlog"].inc()
            return
        self._rows.append(row)
        self._has_data.set()
        if len(self._rows) >= self.max_rows:
            self._full.set()

    def update_device(self, device_id: str, values: dict[str, Any]) -> None:
        """Queue column updates of one device; later values for a column replace earlier ones."""
        pending = self._updates.get(device_id)
        if pending is None:
            self._updates[device_id] = dict(values)
        else:
            pending.update(values)
        self._has_data.set()

    def note_load(self, device_id: str, report: LoadReport, received_at: float, summary: TelemetrySummary) -> None:
        """Remember the device's newest report for its devices row (written at most every `load_every_s`)."""
        self._loads[device_id] = (report, received_at, summary)

    def wake(self) -> None:
        """Make the flush loop run soon (messages wait for their acknowledgement, even ones dropped)."""
        self._has_data.set()

    @property
    def pending(self) -> int:
        """Rows and device updates not yet written."""
        return len(self._rows) + len(self._updates) + len(self._loads)

    def _take_loads(self, force: bool) -> list[devices.EncodedLoad]:
        now = time.monotonic()
        if not self._loads or (not force and now < self._next_loads):
            return []
        self._next_loads = now + self.load_every_s
        loads, self._loads = self._loads, {}
        to_json = pydantic_core.to_json
        # Encoded here in one pass (pydantic-core serialises the frozen models directly); a state update
        # queued for the same device is written after these rows, so its values win, as they did when merged.
        return [
            (
                received_at,
                report.boot_id,
                report.seq,
                to_json(
                    {
                        "sent_at": report.sent_at,
                        "interval_s": report.interval_s,
                        "device": report.device,
                        "pipelines": summary,
                    }
                ).decode(),
                to_json(report.models).decode(),
                device_id,
            )
            for device_id, (report, received_at, summary) in loads.items()
        ]

    # --- the owned background task ---------------------------------------------------------------------

    async def run(self) -> None:
        """Flush forever (cancel to stop; `drain()` first to write what is buffered)."""
        loop = asyncio.get_running_loop()
        next_prune = loop.time() + self.prune_every_s
        while True:
            try:
                wake = min(next_prune - loop.time(), self.load_every_s if self._loads else next_prune)
                await asyncio.wait_for(self._has_data.wait(), timeout=max(0.0, wake))
            except TimeoutError:
                await self.flush()
            else:
                deadline = loop.time() + self.max_delay_s
                while len(self._rows) < self.max_rows and (remaining := deadline - loop.time()) > 0:
                    self._full.clear()
                    try:
                        await asyncio.wait_for(self._full.wait(), timeout=remaining)
                    except TimeoutError:
                        break
                await self.flush()
            if loop.time() >= next_prune:
                next_prune = loop.time() + self.prune_every_s
                await self._prune()

    async def flush(self, *, force: bool = False) -> None:
        """Write everything buffered now in one transaction (device load figures only when due or forced)."""
        loads = self._take_loads(force)
        rows, updates = self._rows, self._updates
        self._rows, self._updates = [], {}
        releases = [take() for take in self.ack_sources]
        self._has_data.clear()
        self._full.clear()
        if not rows and not updates and not loads:
            for release in releases:
                release()
            return
        self._idle.clear()
        finished = False  # stays False if cancelled mid-write: then nothing is acknowledged
        try:
            encoded = [(d, b, seq, sent, recv, encode_summary(p)) for d, b, seq, sent, recv, p in rows]
            async with self.store.begin() as conn:
                await telemetry.insert_rows(conn, encoded)
                await devices.apply_loads(conn, loads)
                await devices.apply_updates(conn, updates)
            finished = True
        except Exception:
            finished = True
            # The DB may be away for a moment; losing a batch of telemetry beats stalling ingest.
            self.metrics.dropped.labels(reason="db_error").inc(len(rows) or 1)
            log.exception("ingest write of %d rows and %d device updates failed", len(rows), len(updates))
        else:
            self.metrics.db_batches.inc()
            self.metrics.db_rows.inc(len(rows))
            if rows and self.on_committed is not None:
                try:
                    self.on_committed(rows)
                except Exception:
                    log.exception("telemetry commit listener failed")
        finally:
            # Acknowledged after a failed write too: the batch is dropped and counted, as ingest never stalls
            # on the database (not acknowledging would only fill the broker's in-flight window).
            if finished:
                for release in releases:
                    release()
            self._idle.set()

    async def drain(self) -> None:
        """Wait for a running flush, then flush what is left (shutdown, tests)."""
        await self._idle.wait()
        await self.flush(force=True)

    async def _prune(self) -> None:
        try:
            async with self.store.begin() as conn:
                removed = await telemetry.prune(conn, time.time() - self.retention_s)
        except Exception:
            log.exception("telemetry pruning failed")
        else:
            if removed:
                log.info("pruned %d telemetry rows older than %.0f s", removed, self.retention_s)
