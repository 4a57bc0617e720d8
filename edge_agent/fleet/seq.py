"""The telemetry sequence number: +1 per report, persisted so it only grows across restarts.

Writing the number on every report would wear the flash of small devices, so the counter reserves
blocks like a database sequence cache: the file holds a high-water mark, rewritten atomically each time
the counter reaches it. After a crash the next start continues from the mark, leaving a gap of at most
one block; the sequence never goes back, which is what the hub relies on (with the boot id) to dedupe.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from models.atomic import write_atomic

log = logging.getLogger(__name__)


class SequenceCounter:
    """Monotonic counter backed by a high-water-mark file in the agent's state directory."""

    def __init__(self, path: Path, *, block: int = 64) -> None:
        if block < 1:
            raise ValueError("block must be >= 1")
        self.path = path
        self.block = block
        path.parent.mkdir(parents=True, exist_ok=True)
        self._next = self._load()
        self._mark = self._next

    @property
    def next_value(self) -> int:
        """The value the next call to `next()` returns."""
        return self._next

    def next(self) -> int:
        """Take the next number; persists a new high-water mark when the reserved block is used up."""
        if self._next >= self._mark:
            self._mark = self._next + self.block
            write_atomic(self.path, f"{self._mark}\n".encode())
        value = self._next
        self._next += 1
        return value

    def _load(self) -> int:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return 0
        try:
            value = int(text)
            if value < 0:
                raise ValueError(text)
        except ValueError:
            # Atomic writes make this a disk fault. Restarting at 0 would break "only grows"; the wall
            # clock in ms is far above any count a device reaches at telemetry rates, so it is safe.
            value = int(time.time() * 1000)
            log.error("sequence file %s is unreadable (%r): continuing from %s", self.path, text[:40], value)
        return value
