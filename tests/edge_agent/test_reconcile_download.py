"""Artifact downloads against a real HTTPS server with client certificates (certificates from the test rig)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from reconcile_support import Artifact, ArtifactServer, HubKey, hub_artifact, start_artifact_server
from rig import TestPKI, client_ssl_context

from edge_agent.reconcile.download import Downloader, DownloadSettings
from edge_agent.reconcile.errors import DownloadError, IntegrityError

FAST = DownloadSettings(attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02, chunk_bytes=16384)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """tiny-cnn 2 with 300 KB of padding, signed by a hub key."""
    return hub_artifact("tiny-cnn", "2", tmp_path_factory.mktemp("art"), HubKey.generate(), padding_bytes=300_000)


@pytest_asyncio.fixture
async def server(mqtt_pki: TestPKI, big: Artifact) -> AsyncIterator[ArtifactServer]:
    srv = ArtifactServer(files={big.sha256: big.tar})
    stop = await start_artifact_server(srv, mqtt_pki.server_certfile, mqtt_pki.server_keyfile, mqtt_pki.cafile)
    yield srv
    await stop()


def downloader(tmp_path: Path, pki: TestPKI, cn: str = "dev-1", settings: DownloadSettings = FAST) -> Downloader:
    return Downloader(tmp_path / "downloads", pki.ssl_context(cn), settings)


async def test_download_verifies_and_reports_progress(
    tmp_path: Path, mqtt_pki: TestPKI, server: ArtifactServer, big: Artifact
) -> None:
    seen: list[tuple[int, int]] = []
    async with downloader(tmp_path, mqtt_pki) as d:
        path = await d.fetch(big.desired(server.url), lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == big.tar.read_bytes()
    assert path.name == f"{big.sha256}.tar" and not d.part_path(big.sha256).exists()
    assert seen[-1] == (big.size, big.size) and len(seen) > 5
    assert server.peers == ["dev-1"]  # the device certificate was presented
    # A complete artifact is not fetched again.
    async with downloader(tmp_path, mqtt_pki) as d:
        await d.fetch(big.desired(server.url))
    assert len(server.requests) == 1


async def test_dropped_connection_resumes_with_range(
    tmp_path: Path, mqtt_pki: TestPKI, server: ArtifactServer, big: Artifact
) -> None:
    server.drop_after[big.sha256] = 120_000
    async with downloader(tmp_path, mqtt_pki) as d:
        path = await d.fetch(big.desired(server.url))
        assert d.resumed_from is not None and 0 < d.resumed_from <= 120_000
    assert path.read_bytes() == big.tar.read_bytes()
    assert server.requests[0] == (big.sha256, None)
    assert server.requests[1] == (big.sha256, f"bytes={d.resumed_from}-")


async def test_partial_file_from_a_crash_is_resumed(
    tmp_path: Path, mqtt_pki: TestPKI, server: ArtifactServer, big: Artifact
) -> None:
    d = downloader(tmp_path, mqtt_pki)
    d.directory.mkdir(parents=True)
    d.part_path(big.sha256).write_bytes(big.tar.read_bytes()[:50_000])
    async with d:
        await d.fetch(big.desired(server.url))
    assert server.requests == [(big.sha256, "bytes=50000-")]
    assert d.final_path(big.sha256).read_bytes() == big.tar.read_bytes()


async def test_server_ignoring_range_restarts_from_zero(
    tmp_path: Path, mqtt_pki: TestPKI, server: ArtifactServer, big: Artifact
) -> None:
    server.ignore_range = True
    d = downloader(tmp_path, mqtt_pki)
    d.directory.mkdir(parents=True)
    d.part_path(big.sha256).write_bytes(b"x" * 1000)  # even garbage: the 200 replaces it
    async with d:
        path = await d.fetch(big.desired(server.url))
    assert path.read_bytes() == big.tar.read_bytes()


async def test_corrupt_partial_file_is_refetched_once(
    tmp_path: Path, mqtt_pki: TestPKI, server: ArtifactServer, big: Artifact
) -> None:
    d = downloader(tmp_path, mqtt_pki)
    d.directory.mkdir(parents=True)
    d.part_path(big.sha256).write_bytes(b"\0" * 40_000)  # a torn write after a power cut
    async with d:
        path = await d.fetch(big.desired(server.url))
    assert path.read_bytes() == big.tar.read_bytes()
    assert [r for _s, r in server.requests] == ["bytes=40000-", None]


async def test_tampered_artifact_fails_and_leaves_nothing(
    tmp_path: Path, mqtt_pki: TestPKI, server: ArtifactServer, big: Artifact
) -> None:
    tampered = tmp_path / "tampered.tar"
    data = bytearray(big.tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    server.files[big.sha256] = tampered
    d = downloader(tmp_path, mqtt_pki)
    async with d:
        with pytest.raises(IntegrityError, match="sha256"):
            await d.fetch(big.desired(server.url))
    assert not d.part_path(big.sha256).exists() and not d.final_path(big.sha256).exists()
    assert len(server.requests) == 1  # the whole file came from the hub and is wrong: no retry loop


async def test_forbidden_is_permanent(tmp_path: Path, mqtt_pki: TestPKI, server: ArtifactServer, big: Artifact) -> None:
    server.status = 403
    async with downloader(tmp_path, mqtt_pki) as d:
        with pytest.raises(DownloadError, match="403") as info:
            await d.fetch(big.desired(server.url))
    assert info.value.permanent and len(server.requests) == 1


async def test_server_errors_are_retried_a_bounded_number_of_times(
    tmp_path: Path, mqtt_pki: TestPKI, server: ArtifactServer, big: Artifact
) -> None:
    server.status = 503
    async with downloader(tmp_path, mqtt_pki) as d:
        with pytest.raises(DownloadError, match="after 3 attempts"):
            await d.fetch(big.desired(server.url))
    assert len(server.requests) == 3


async def test_untrusted_hub_certificate_is_refused(
    tmp_path: Path, mqtt_pki: TestPKI, server: ArtifactServer, big: Artifact
) -> None:
    # A client that trusts only another CA: the TLS handshake fails, nothing is requested.
    other = TestPKI(tmp_path / "other-pki")
    ctx = client_ssl_context(other.cafile, mqtt_pki.client("dev-1"))
    async with Downloader(tmp_path / "downloads", ctx, FAST) as d:
        with pytest.raises(DownloadError, match="3 attempts"):
            await d.fetch(big.desired(server.url))
    assert server.requests == []
