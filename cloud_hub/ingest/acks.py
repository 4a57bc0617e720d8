"""End-to-end telemetry acknowledgements: after a commit, tell each device which of its reports are stored.

A PUBACK only proves that the broker took a report; mosquitto then loses shared-subscription messages
across its own restart (docs/reliability.md), so the agent keeps every report on disk until the hub names
it in a `TelemetryAck` on `devices/{id}/telemetry/ack` (QoS 1). The writer hands every committed batch to
`committed` (reports skipped by the store's (device, boot_id, seq) key included: they are stored too);
`run` publishes what gathered at most once per `interval_s`, one message per (device, boot) with the seqs
as [first, last] runs, so a device reporting every 10 s costs one ack per report and a backlog drained in a
burst costs one ack per device per interval. Acks go out on every connected broker link; while none is
connected they wait (up to `max_pending` seqs, then the newest are forgotten: the agent resends them and
the next commit acknowledges them again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence

import pydantic_core

from cloud_hub.broker import BrokerLink
from cloud_hub.metrics import HubMetrics
from protocols.topics import Topics

log = logging.getLogger(__name__)

MAX_RANGES = 1024  # TelemetryAck.ranges' bound: more runs go in further messages
MAX_CACHED_TOPICS = 1_000_000


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged [first, last] runs of `seqs` (duplicates ignored)."""
    runs: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


class AckPublisher:
    """Collects committed (device, boot_id, seq) and publishes `TelemetryAck`s in batches per device."""

    def __init__(
        self,
        topics: Topics,
        links: Callable[[], Sequence[BrokerLink]],
        metrics: HubMetrics,
        *,
        interval_s: float = 1.0,
        max_pending: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topics = topics
        self.links = links
        self.metrics = metrics
        self.interval_s = interval_s
        self.max_pending = max_pending
        self.clock = clock
        self._pending: dict[tuple[str, str], list[int]] = {}
        self._count = 0
        self._topics: dict[str, str] = {}
        self._wake = asyncio.Event()

    @property
    def pending(self) -> int:
        """Seqs committed and not yet acknowledged to their device."""
        return self._count

    def committed(self, rows: Iterable[tuple[str, str, int, object, object, object]]) -> None:
        """Note the reports of a committed batch (called by the writer after its commit)."""
        pending = self._pending
        for device_id, boot_id, seq, *_ in rows:
            if self._count >= self.max_pending:
                self.metrics.acks_forgotten.inc()
                continue
            key = (device_id, boot_id)
            seqs = pending.get(key)
            if seqs is None:
                pending[key] = [seq]
            else:
                seqs.append(seq)
            self._count += 1
        if pending:
            self._wake.set()

    async def run(self) -> None:
        """Publish what gathered, at most once per `interval_s`, forever (cancel to stop)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.publish_pending()
            except Exception:
                log.exception("publishing telemetry acks failed")
            await asyncio.sleep(self.interval_s)

    def publish_pending(self) -> int:
        """Publish every pending ack now on the connected links; the number of messages (0 if none is up)."""
        links = [link for link in self.links() if link.connected.is_set()]
        if not links or not self._pending:
            if self._pending:
                self._wake.set()  # try again next round
            return 0
        pending, self._pending, self._count = self._pending, {}, 0
        now = self.clock()
        to_json = pydantic_core.to_json
        messages = 0
        for (device_id, boot_id), seqs in pending.items():
            topic = self._topic(device_id)
            runs = seq_ranges(seqs)
            for i in range(0, len(runs), MAX_RANGES):
                payload = to_json(
                    {
                        "v": 1,
                        "device_id": device_id,
                        "boot_id": boot_id,
                        "ranges": runs[i : i + MAX_RANGES],
                        "sent_at": now,
                    }
                )
                for link in links:
                    # Not awaited: the PUBACK only frees paho's in-flight slot; a lost ack costs a resend.
                    link.client.publish(topic, payload, qos=1)
                messages += 1
        self.metrics.acks_sent.inc(messages)
        return messages

    def _topic(self, device_id: str) -> str:
        topic = self._topics.get(device_id)
        if topic is None:
            topic = self.topics.telemetry_ack(device_id)
            if len(self._topics) < MAX_CACHED_TOPICS:
                self._topics[device_id] = topic
        return topic
