"""The telemetry spool and sequence counter: bounded, oldest-first, crash-tolerant, monotonic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.fleet.seq import SequenceCounter
from edge_agent.fleet.spool import Spool


def _drain(spool: Spool) -> list[bytes]:
    out = []
    while (record := spool.oldest()) is not None:
        out.append(record.payload)
        spool.remove(record.key)
    return out


def test_oldest_first_and_survives_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    for i in range(5):
        spool.append(f"r{i}".encode())
    first = spool.oldest()
    assert first is not None and first.payload == b"r0"
    spool.remove(first.key)
    reopened = Spool(tmp_path / "s")
    assert len(reopened) == 4
    reopened.append(b"r5")
    assert _drain(reopened) == [b"r1", b"r2", b"r3", b"r4", b"r5"]
    assert reopened.empty() and not list((tmp_path / "s").iterdir())


def test_record_is_kept_until_removed(tmp_path: Path) -> None:
    """A crash between publishing and remove() re-sends the record on restart (at least once)."""
    spool = Spool(tmp_path / "s")
    spool.append(b"a")
    assert spool.oldest() is not None  # "sent", then the process dies before remove()
    assert _drain(Spool(tmp_path / "s")) == [b"a"]


def test_bounded_by_count_drops_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_records=3)
    for i in range(7):
        spool.append(bytes([i]))
    assert spool.dropped == 4
    assert _drain(spool) == [bytes([4]), bytes([5]), bytes([6])]


def test_bounded_by_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=3 * (12 + 100))
    for i in range(5):
        spool.append(bytes([i]) * 100)
    assert len(spool) == 3 and spool.size_bytes <= 3 * 112 and spool.dropped == 2


def test_truncated_and_temp_files_are_tolerated(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    for i in range(3):
        spool.append(f"r{i}".encode() * 10)
    files = sorted((tmp_path / "s").glob("*.rec"))
    # A torn write of the last record, and a temp file a crash left behind.
    files[-1].write_bytes(files[-1].read_bytes()[:-5])
    (tmp_path / "s" / "00000000000000000099.tmp").write_bytes(b"EFS1\x00")
    files[0].write_bytes(b"")  # and an empty one
    reopened = Spool(tmp_path / "s")
    assert not list((tmp_path / "s").glob("*.tmp"))
    assert _drain(reopened) == [b"r1" * 10]
    assert reopened.corrupt == 2
    reopened.append(b"next")
    assert _drain(reopened) == [b"next"]


def test_records_are_private_and_names_sort(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    for i in range(12):
        spool.append(str(i).encode())
    mode = os.stat(next((tmp_path / "s").glob("*.rec"))).st_mode & 0o777
    assert mode == 0o600
    assert _drain(spool) == [str(i).encode() for i in range(12)]


def test_sequence_only_grows_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state" / "telemetry.seq"
    seq = SequenceCounter(path, block=4)
    first = [seq.next() for _ in range(6)]
    assert first == [0, 1, 2, 3, 4, 5]
    again = SequenceCounter(path, block=4)  # a restart (or a crash: nothing else is written)
    nxt = again.next()
    assert nxt > first[-1]
    assert [again.next() for _ in range(3)] == [nxt + 1, nxt + 2, nxt + 3]


def test_sequence_file_garbage_never_goes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "telemetry.seq"
    path.write_text("garbage")
    assert SequenceCounter(path).next() > 10**12
