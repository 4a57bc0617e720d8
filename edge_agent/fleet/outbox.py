"""Reports waiting for the hub's end-to-end acknowledgement: an index over the on-disk spool.

Every load report is written to the spool before it is sent and stays there until a `TelemetryAck` from
the hub names its (boot_id, seq): a PUBACK only says the broker has it, and a broker restart can lose
what it had not yet delivered to the hub (mosquitto keeps no `$share` subscription across a restart).
This index maps (boot_id, seq) -> spool key and remembers, per report, when it was last sent on the
current connection. It is rebuilt from the spool on start, so reports left by a previous run (their own
boot id) are resent and acknowledged like new ones. The spool's bounds still apply: when it is full the
oldest reports are dropped (`Spool.dropped`) whether acknowledged or not, and forgotten here.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.fleet.spool import Spool

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Pending:
    """One unacknowledged report: spool key, identity, when it was last sent (loop time; None: not since the
    last connect or timeout) and how often."""

    key: int
    boot_id: str
    seq: int
    sent_at: float | None = None
    sends: int = 0  # by this process


def _identity(payload: bytes) -> tuple[str, int] | None:
    try:
        data = json.loads(payload)
        boot_id, seq = data["boot_id"], data["seq"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(boot_id, str) or not isinstance(seq, int):
        return None
    return boot_id, seq


class Outbox:
    """Thread-safe: `add` runs in a worker thread (it fsyncs), the rest on the event loop."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._lock = threading.Lock()
        self._entries: dict[int, Pending] = {}  # by spool key, ascending (keys only grow)
        self._by_id: dict[tuple[str, int], int] = {}
        self.unreadable = 0  # spooled records of a previous run that were not load reports: removed
        for key in spool.held_keys():
            payload = spool.read(key)
            found = _identity(payload) if payload is not None else None
            if found is None:
                if payload is not None:
                    self.unreadable += 1
                    spool.remove(key)
                continue
            self._insert(Pending(key, *found))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def add(self, payload: bytes, boot_id: str, seq: int) -> int:
        """Spool one report durably (blocking: fsync) and index it as not yet sent; its key."""
        key = self.spool.append(payload)
        with self._lock:
            self._insert(Pending(key, boot_id, seq))
            self._forget_dropped()
        return key

    def ack(self, boot_id: str, ranges: Sequence[tuple[int, int]]) -> list[int]:
        """Forget the reports of `boot_id` whose seq lies in one of `ranges`; their spool keys (to remove)."""
        starts = [first for first, _ in ranges]
        keys: list[int] = []
        with self._lock:
            for (boot, seq), key in list(self._by_id.items()):
                if boot != boot_id:
                    continue
                i = bisect.bisect_right(starts, seq) - 1
                if i >= 0 and seq <= ranges[i][1]:
                    del self._by_id[(boot, seq)]
                    self._entries.pop(key, None)
                    keys.append(key)
        return keys

    def oldest(self) -> Pending | None:
        """The oldest unacknowledged report."""
        with self._lock:
            self._forget_dropped()
            return next(iter(self._entries.values()), None)

    def unsent(self) -> list[Pending]:
        """Unacknowledged reports not sent on this connection (or since the last timeout), oldest first."""
        with self._lock:
            return [p for p in self._entries.values() if p.sent_at is None]

    def mark_sent(self, entry: Pending, at: float) -> None:
        """Record that `entry` went out at loop time `at`."""
        entry.sent_at = at
        entry.sends += 1

    def forget(self, entry: Pending) -> None:
        """Drop `entry` from the index (its record is gone from the spool)."""
        with self._lock:
            self._entries.pop(entry.key, None)
            self._by_id.pop((entry.boot_id, entry.seq), None)

    def resend_all(self) -> None:
        """Treat every unacknowledged report as not sent (a new connection, or a timeout: go back to the oldest)."""
        with self._lock:
            for entry in self._entries.values():
                entry.sent_at = None

    # --- internals (lock held) ------------------------------------------------------------------------

    def _insert(self, entry: Pending) -> None:
        old = self._by_id.get((entry.boot_id, entry.seq))
        if old is not None:
            self._entries.pop(old, None)  # the same report spooled twice: keep the newer copy
        self._entries[entry.key] = entry
        self._by_id[(entry.boot_id, entry.seq)] = entry.key

    def _forget_dropped(self) -> None:
        # The spool drops oldest first when full: forget index entries from the front whose record went.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if key in self.spool:
                return
            del self._entries[key]
            self._by_id.pop((entry.boot_id, entry.seq), None)
