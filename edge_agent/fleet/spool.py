"""A bounded on-disk FIFO of reports kept while the broker is away: one file per record.

Each record is written to a temp file, fsynced and renamed to ``<key:020d>.rec`` (then the directory is
fsynced), so a crash leaves either the whole record or none; leftover temp files are removed on open and
a record that fails its length/checksum check (a torn write on a filesystem that reorders) is dropped and
counted. Keys grow monotonically, so file names sort oldest first. When the spool holds `max_records`
or `max_bytes`, the oldest records are dropped to make room and counted in `dropped`.

A record is removed only after the caller has delivered it (`remove`; for telemetry: once the hub's
end-to-end ack names it, edge_agent/fleet/outbox.py), so a crash before that sends the record again on
restart: consumers dedupe (the hub does, by boot_id + seq).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fleet.errors import FleetError
from models.atomic import fsync_dir

log = logging.getLogger(__name__)

_SUFFIX = ".rec"
_TMP_SUFFIX = ".tmp"
_MAGIC = b"EFS1"
_HEADER = len(_MAGIC) + 8  # magic, payload length (4), crc32 (4)


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One stored record: its key (order) and payload."""

    key: int
    payload: bytes


def _encode(payload: bytes) -> bytes:
    return _MAGIC + len(payload).to_bytes(4, "big") + zlib.crc32(payload).to_bytes(4, "big") + payload


def _decode(data: bytes) -> bytes | None:
    if len(data) < _HEADER or data[:4] != _MAGIC:
        return None
    length = int.from_bytes(data[4:8], "big")
    payload = data[_HEADER:]
    if len(payload) != length or zlib.crc32(payload) != int.from_bytes(data[8:12], "big"):
        return None
    return payload


class Spool:
    """Bounded, crash-tolerant, oldest-first on-disk queue of byte records. Thread-safe."""

    def __init__(self, directory: Path, *, max_records: int = 8640, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError("spool bounds must be positive")
        self.directory = directory
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.dropped = 0  # records dropped because the spool was full (since open)
        self.corrupt = 0  # records found unreadable and discarded (since open)
        self._lock = threading.Lock()
        self._keys: deque[int] = deque()
        self._sizes: dict[int, int] = {}
        self._bytes = 0
        self._next_key = 0
        self._open()

    # --- queries ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    @property
    def size_bytes(self) -> int:
        """Bytes held on disk by the records (payload plus header)."""
        with self._lock:
            return self._bytes

    def empty(self) -> bool:
        """True when no record is waiting."""
        with self._lock:
            return not self._keys

    # --- operations ------------------------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Store `payload` durably at the tail (dropping the oldest records if full); return its key."""
        data = _encode(payload)
        if len(data) > self.max_bytes:
            raise FleetError(f"record of {len(payload)} bytes exceeds the spool's {self.max_bytes} bytes")
        with self._lock:
            key = self._next_key
            self._next_key += 1
            while self._keys and (len(self._keys) >= self.max_records or self._bytes + len(data) > self.max_bytes):
                self._unlink(self._keys.popleft())
                self.dropped += 1
            final = self._path(key)
            tmp = final.with_suffix(_TMP_SUFFIX)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            fsync_dir(self.directory)
            self._keys.append(key)
            self._sizes[key] = len(data)
            self._bytes += len(data)
        if self.dropped and self.dropped % 100 == 1:
            log.warning("telemetry spool full (%s records): %s oldest dropped so far", len(self), self.dropped)
        return key

    def oldest(self) -> SpoolRecord | None:
        """The oldest readable record, or None when empty; unreadable records are discarded on the way."""
        while True:
            with self._lock:
                if not self._keys:
                    return None
                key = self._keys[0]
                try:
                    payload = _decode(self._path(key).read_bytes())
                except FileNotFoundError:
                    payload = None
                if payload is not None:
                    return SpoolRecord(key, payload)
                log.warning("spool record %s is unreadable: discarded", key)
                self.corrupt += 1
                self._forget(key)

    def held_keys(self) -> list[int]:
        """The keys held, oldest first."""
        with self._lock:
            return list(self._keys)

    def __contains__(self, key: int) -> bool:
        with self._lock:
            return key in self._sizes

    def read(self, key: int) -> bytes | None:
        """The payload of record `key`, or None if it is gone (dropped, removed) or unreadable (then discarded)."""
        with self._lock:
            if key not in self._sizes:
                return None
            try:
                payload = _decode(self._path(key).read_bytes())
            except FileNotFoundError:
                payload = None
            if payload is None:
                log.warning("spool record %s is unreadable: discarded", key)
                self.corrupt += 1
                self._forget(key)
            return payload

    def remove(self, key: int) -> None:
        """Delete a delivered record (no-op if it was already dropped)."""
        with self._lock:
            if key in self._sizes:
                self._forget(key)

    # --- internals -------------------------------------------------------------------------------

    def _path(self, key: int) -> Path:
        return self.directory / f"{key:020d}{_SUFFIX}"

    def _forget(self, key: int) -> None:
        with contextlib.suppress(ValueError):
            self._keys.remove(key)
        self._unlink(key)

    def _unlink(self, key: int) -> None:
        self._bytes -= self._sizes.pop(key, 0)
        self._path(key).unlink(missing_ok=True)

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        found: list[tuple[int, int]] = []
        for entry in os.scandir(self.directory):
            name = entry.name
            if name.endswith(_TMP_SUFFIX):
                # A write the process did not finish: the record was never acknowledged to anyone.
                os.unlink(entry.path)
                continue
            if not name.endswith(_SUFFIX) or not name[: -len(_SUFFIX)].isdigit():
                continue
            found.append((int(name[: -len(_SUFFIX)]), entry.stat().st_size))
        found.sort()
        for key, size in found:
            self._keys.append(key)
            self._sizes[key] = size
            self._bytes += size
        self._next_key = found[-1][0] + 1 if found else 0
        if found:
            log.info("telemetry spool %s holds %s records from a previous run", self.directory, len(found))
