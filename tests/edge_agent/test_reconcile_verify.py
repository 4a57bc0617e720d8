"""Artifact verification against the pinned keys, and the apply policies with an injected clock."""

from __future__ import annotations

import calendar
import io
import tarfile
from pathlib import Path

import pytest
from reconcile_support import Artifact, HubKey, hub_artifact

from edge_agent.reconcile.errors import VerificationError
from edge_agent.reconcile.policy import PolicyClock, PolicyGate, in_window, seconds_until_window
from edge_agent.reconcile.verify import pinned_keys, verify_artifact, verify_installed
from models.package import open_package
from protocols.manifest import SIGNATURE_FILE
from protocols.messages import ApplyPolicy, SigningKey

BASE = "https://hub.example"


@pytest.fixture(scope="module")
def key() -> HubKey:
    return HubKey.generate()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, key: HubKey) -> Artifact:
    return hub_artifact("tiny-cnn", "2", tmp_path_factory.mktemp("art"), key)


def test_verified_artifact_carries_the_desired_signature(tmp_path: Path, key: HubKey, artifact: Artifact) -> None:
    keys = pinned_keys([key.pinned])
    pkg = verify_artifact(artifact.tar, artifact.desired(BASE), keys, tmp_path / "staging")
    assert (pkg.manifest.name, pkg.manifest.version) == ("tiny-cnn", "2")
    assert pkg.signature == artifact.signature
    # The installed copy can be checked again later without the download (rollback path).
    verify_installed(open_package(pkg.path), artifact.desired(BASE), keys)


def test_key_not_pinned_is_refused(tmp_path: Path, artifact: Artifact) -> None:
    other = pinned_keys([HubKey.generate().pinned])
    with pytest.raises(VerificationError, match="untrusted key"):
        verify_artifact(artifact.tar, artifact.desired(BASE), other, tmp_path / "staging")
    assert not (tmp_path / "staging").exists()


def test_name_or_version_mismatch_is_refused(tmp_path: Path, key: HubKey, artifact: Artifact) -> None:
    wrong = artifact.desired(BASE).model_copy(update={"version": "3"})
    with pytest.raises(VerificationError, match="desired state names tiny-cnn:3"):
        verify_artifact(artifact.tar, wrong, pinned_keys([key.pinned]), tmp_path / "staging")


def test_signature_of_another_manifest_is_refused(tmp_path: Path, key: HubKey, artifact: Artifact) -> None:
    v1 = hub_artifact("tiny-cnn", "1", tmp_path, key)
    swapped = artifact.desired(BASE).model_copy(update={"signature": v1.signature})
    with pytest.raises(VerificationError, match="does not match manifest"):
        verify_artifact(artifact.tar, swapped, pinned_keys([key.pinned]), tmp_path / "staging")


def test_tampered_file_inside_a_consistent_tar_is_refused(tmp_path: Path, key: HubKey, artifact: Artifact) -> None:
    # Same manifest and signature, other model bytes: the archive is internally inconsistent.
    out = tmp_path / "tampered.tar"
    with tarfile.open(artifact.tar) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member)
            raw = data.read() if data else b""
            if member.name.endswith(".onnx"):
                raw = raw[:-1] + bytes([raw[-1] ^ 1])
            dst.addfile(member, io.BytesIO(raw))
    with pytest.raises(VerificationError, match="sha256"):
        verify_artifact(out, artifact.desired(BASE), pinned_keys([key.pinned]), tmp_path / "staging")


def test_archive_signature_is_ignored_in_favour_of_the_desired_one(
    tmp_path: Path, key: HubKey, artifact: Artifact
) -> None:
    # The tar was signed by some other key; the desired signature (pinned hub key) is what counts.
    rogue = hub_artifact("tiny-cnn", "2", tmp_path, HubKey.generate())
    pkg = verify_artifact(rogue.tar, artifact.desired(BASE), pinned_keys([key.pinned]), tmp_path / "staging")
    assert (pkg.path / SIGNATURE_FILE).read_text() == artifact.signature.model_dump_json()


def test_pinned_key_with_a_wrong_id_is_refused(key: HubKey) -> None:
    bad = SigningKey(key_id="0" * 16, public_key_pem=key.pinned.public_key_pem)
    with pytest.raises(VerificationError, match="has id"):
        pinned_keys([bad])


# --- apply policies -----------------------------------------------------------------------------------------


def utc(hhmm: str) -> float:
    h, m = hhmm.split(":")
    return float(calendar.timegm((2024, 5, 1, int(h), int(m), 0)))


@pytest.mark.parametrize(
    ("start", "end", "now", "wait_s"),
    [
        ("02:00", "04:00", "03:00", 0),
        ("02:00", "04:00", "01:00", 3600),
        ("02:00", "04:00", "04:00", 22 * 3600),
        ("22:00", "02:00", "23:30", 0),
        ("22:00", "02:00", "01:59", 0),
        ("22:00", "02:00", "12:00", 10 * 3600),
        ("05:00", "05:00", "17:00", 0),
    ],
)
def test_window(start: str, end: str, now: str, wait_s: float) -> None:
    policy = ApplyPolicy(mode="window", window_start_utc=start, window_end_utc=end)
    assert seconds_until_window(policy, utc(now)) == wait_s
    assert in_window(policy, utc(now)) == (wait_s == 0)


class FakeTime:
    """A clock that moves only when slept on."""

    def __init__(self, wall: float) -> None:
        self.now = wall
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> PolicyClock:
        return PolicyClock(wall=lambda: self.now, monotonic=lambda: self.now, sleep=self.sleep)


async def test_window_wait_rechecks_the_clock() -> None:
    t = FakeTime(utc("01:00"))
    gate = PolicyGate(clock=t.clock(), recheck_s=600)
    policy = ApplyPolicy(mode="window", window_start_utc="02:00", window_end_utc="03:00")
    assert not gate.allowed_now(policy)
    await gate.wait(policy)
    assert t.now == utc("02:00") and t.sleeps == [600] * 6


async def test_safety_idle_waits_for_a_quiet_period() -> None:
    t = FakeTime(0.0)
    traffic = iter([(0, False), (1, False), (2, True), (2, True), (2, False)] + [(2, False)] * 100)
    gate = PolicyGate(lambda: next(traffic), t.clock(), poll_s=0.05)
    policy = ApplyPolicy(mode="safety_idle", safety_idle_ms=200)
    assert not gate.allowed_now(policy)
    await gate.wait(policy)
    # Activity was last seen at t=0.2 (the 4th poll); then 200 ms of quiet.
    assert t.now == pytest.approx(0.4)


async def test_immediate_and_no_safety_pipelines_do_not_wait() -> None:
    gate = PolicyGate(None, FakeTime(0).clock())
    assert gate.allowed_now(ApplyPolicy())
    assert gate.allowed_now(ApplyPolicy(mode="safety_idle"))
    await gate.wait(ApplyPolicy(mode="safety_idle"))
