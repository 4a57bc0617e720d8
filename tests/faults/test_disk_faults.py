"""Disk faults on the device, injected with real mounts (the suite runs as root; skipped otherwise):

- disk full while downloading: a 2 MiB tmpfs is mounted on the agent's `reconcile/downloads`, and the rollout
  ships a 3 MB package (ENOSPC mid-download);
- the state directory made read-only: a read-only bind mount of `state/` over itself while the agent runs
  (root ignores permission bits, so chmod would prove nothing).

Must hold: the active version keeps serving with correct answers, the failure is reported to the hub with an
error that names it, nothing half-written is activated, and a new revision converges once the disk is healthy.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_support import SAFETY, STANDARD, FaultRig, Traffic, failures, until
from rollout_support import publisher_package

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(150),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs / read-only bind mount: needs root"),
]


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount at teardown (innermost first)."""
    points: list[Path] = []
    yield points
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True, timeout=10)


async def _model_report(frig: FaultRig, device_id: str) -> dict[str, object]:
    reported = await frig.reported(device_id)
    return next((m for m in reported.get("models", []) if m["name"] == "tiny-cnn"), {})


async def test_disk_full_while_downloading(frig: FaultRig, tmp_path: Path, mounts: list[Path]) -> None:
    package = publisher_package(tmp_path, "4", padding_bytes=3_000_000)
    await frig.cli("models", "trust-key", str(tmp_path / "publisher-4.pub"))
    await frig.cli("models", "push", str(package))
    frig.refs.alias("4", "2")
    agent = await frig.add_fault_agent("dev-d", (SAFETY, STANDARD), start=False)
    downloads = agent.directory / "state" / "reconcile" / "downloads"
    downloads.mkdir(parents=True)
    _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(downloads))
    mounts.append(downloads)
    await frig.launch(agent)
    async with Traffic(lambda: agent.url, frig.refs) as traffic:
        traffic.paced(SAFETY.name, 10)
        traffic.closed_loop(STANDARD.name)
        first = await frig.rollout("4", "--canary", "1", "--waves", "100%", "--bake", "0s")
        detail = await frig.wait_rollout(first, ("rolled_back", "halted", "failed"), timeout_s=60)
        report = await _model_report(frig, "dev-d")
        assert agent.child is not None
        logs = agent.child.output()
        assert "No space left on device" in logs
        assert await frig.serving(agent) == "1"
        # Nothing half-written became a version: no v4 in the store, no complete artifact.
        assert not list((agent.directory / "state").rglob("tiny-cnn/4"))
        assert not list(downloads.glob("*.tar"))
        # Space comes back (the tmpfs grows); a new revision of the same version converges.
        _mount("-o", "remount,size=32m", str(downloads))
        second = await frig.rollout("4", "--canary", "1", "--waves", "100%", "--bake", "0s")
        await frig.wait_rollout(second, ("completed",), timeout_s=60)
        await until(lambda: frig.converged_on("dev-d", "4"), 30, "v4 active")
        await asyncio.sleep(1)
    assert failures(traffic.outcomes) == [], failures(traffic.outcomes)[:5]
    assert {o.version for o in traffic.outcomes} == {"1", "4"}
    print(f"disk full: rollout {detail['state']}: {detail.get('reason')}; device reported {report}")


async def test_state_dir_read_only(frig: FaultRig, mounts: list[Path]) -> None:
    agent = await frig.add_fault_agent("dev-r", (SAFETY, STANDARD))
    state = agent.directory / "state"
    async with Traffic(lambda: agent.url, frig.refs) as traffic:
        traffic.paced(SAFETY.name, 10)
        traffic.closed_loop(STANDARD.name)
        await asyncio.sleep(2)
        _mount("--bind", str(state), str(state))
        mounts.append(state)
        _mount("-o", "remount,ro,bind", str(state))
        rollout = await frig.rollout("2", "--canary", "1", "--waves", "100%", "--bake", "0s")
        # The device says it cannot take the revision; the hub halts the rollout and rolls back.
        during = await frig.wait_rollout(rollout, ("rolled_back", "halted", "failed"), timeout_s=30)
        assert "Read-only file system" in str(during.get("reason"))
        assert await frig.serving(agent) == "1"
        report = await _model_report(frig, "dev-r")
        rows_before = len(frig.telemetry("dev-r"))
        subprocess.run(["umount", str(state)], check=True, capture_output=True, timeout=10)
        mounts.remove(state)
        # Writable again: a new revision converges and telemetry carries on.
        again = await frig.rollout("2", "--canary", "1", "--waves", "100%", "--bake", "0s")
        await frig.wait_rollout(again, ("completed",), timeout_s=60)
        await until(lambda: frig.converged_on("dev-r", "2"), 30, "v2 active")
        await until(lambda: len(frig.telemetry("dev-r")) > rows_before + 2, 20, "telemetry after recovery")
    assert failures(traffic.outcomes) == [], failures(traffic.outcomes)[:5]
    assert {o.version for o in traffic.outcomes} == {"1", "2"}
    assert agent.child is not None and agent.child.alive
    print(f"read-only state: rollout during: {during['state']} {during.get('reason')}; device reported {report}")
