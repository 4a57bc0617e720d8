"""Resumable artifact downloads from the hub over HTTPS with the device's client certificate.

`downloads/<sha256>.part` grows as bytes arrive; after a crash or a dropped connection the next attempt
asks for `Range: bytes=<size>-` with `If-Range: "<sha256>"` (the hub's ETag), so it appends only if the
hub still serves the same artifact; a 200 instead of a 206 restarts the file from zero. The sha256 is
computed while streaming (the bytes already on disk are hashed first). Only when both the size and the
sha256 match the desired entry is the file fsynced and renamed to `<sha256>.tar`; a complete `.tar` is
therefore always the right artifact, and a crash at any point leaves a `.part` to resume or a `.tar`.

Retries: network errors, timeouts and 5xx/408/429 are retried with exponential backoff, `attempts` in all;
403/404/410 are not (the hub refuses this device or no longer has the artifact). A sha256 mismatch after
a resume restarts from zero once (the kept bytes may be from a torn write); a mismatch of a download made
from zero fails at once: the hub serves other bytes than it announced.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from edge_agent.reconcile.errors import DownloadError, IntegrityError
from edge_agent.reconcile.faults import checkpoint
from models.atomic import fsync_dir
from protocols.messages import DesiredModel

__all__ = ["DownloadSettings", "Downloader", "Progress"]

log = logging.getLogger(__name__)

# (bytes on disk, total bytes): called as the download advances.
Progress = Callable[[int, int], None]
_PERMANENT = {401, 403, 404, 410}
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class DownloadSettings:
    """Retry and timeout policy of artifact downloads."""

    attempts: int = 6
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 15.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    chunk_bytes: int = 64 * 1024


class _Restart(Exception):
    """Throw the partial file away and try again from zero (counts as an attempt)."""


def _hash_file(path: Path, digest: hashlib._Hash) -> int:
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size


class Downloader:
    """Fetches artifacts into a directory; an async context manager owning one aiohttp session."""

    def __init__(
        self,
        directory: Path,
        ssl_context: ssl.SSLContext | None,
        settings: DownloadSettings | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.directory = directory
        self.settings = settings or DownloadSettings()
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._sleep = sleep or asyncio.sleep
        self.resumed_from: int | None = None  # offset of the last resumed attempt (observability, tests)

    def final_path(self, sha256: str) -> Path:
        """Where a complete, checked artifact lies."""
        return self.directory / f"{sha256}.tar"

    def part_path(self, sha256: str) -> Path:
        """Where a partial artifact grows."""
        return self.directory / f"{sha256}.part"

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Downloader:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self.settings.connect_timeout_s, sock_read=self.settings.read_timeout_s
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
            )
        return self._session

    async def fetch(self, model: DesiredModel, progress: Progress | None = None) -> Path:
        """The path of the complete artifact, downloading (or resuming) it as needed."""
        if not model.url.lower().startswith("https://"):
            # Artifacts come from the hub over TLS with the device certificate; never plain HTTP or file://.
            raise DownloadError(f"artifact URL {model.url[:200]!r} is not https://", permanent=True)
        final = self.final_path(model.sha256)
        if await asyncio.to_thread(final.is_file):
            return final
        self.directory.mkdir(parents=True, exist_ok=True)
        s = self.settings
        restarted = False
        last: Exception | None = None
        for attempt in range(1, s.attempts + 1):
            try:
                await self._attempt(model, progress)
                return final
            except _Restart as exc:
                await asyncio.to_thread(self.part_path(model.sha256).unlink, True)
                if restarted:
                    raise IntegrityError(str(exc)) from exc
                restarted = True
                last = exc
                log.warning("download of %s %s: %s; starting again from zero", model.name, model.version, exc)
                continue
            except DownloadError as exc:
                if exc.permanent:
                    raise
                last = exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = exc
            if attempt < s.attempts:
                delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (attempt - 1))
                log.warning(
                    "download of %s %s failed (attempt %d/%d: %s); retry in %.1f s",
                    model.name,
                    model.version,
                    attempt,
                    s.attempts,
                    last,
                    delay,
                )
                await self._sleep(delay)
        raise DownloadError(f"download of {model.url} failed after {s.attempts} attempts: {last}")

    async def _attempt(self, model: DesiredModel, progress: Progress | None) -> None:
        part = self.part_path(model.sha256)
        digest = hashlib.sha256()
        have = await asyncio.to_thread(_hash_file, part, digest) if part.exists() else 0
        if have > model.size:
            raise _Restart(f"partial file has {have} bytes, more than the {model.size} expected")
        etag = f'"{model.sha256}"'
        headers = {"Range": f"bytes={have}-", "If-Range": etag} if have else {}
        fresh = False
        if have < model.size or have == 0:
            async with self._client().get(model.url, headers=headers) as response:
                if response.status in _PERMANENT:
                    text = (await response.text())[:300]
                    raise DownloadError(f"hub refused {model.url}: HTTP {response.status} {text}", permanent=True)
                if response.status == 416 and have:
                    raise _Restart(f"hub cannot resume at byte {have}")
                if response.status == 200:
                    if have:
                        log.info("hub sent the whole artifact instead of a range: restarting %s", part.name)
                        digest, have = hashlib.sha256(), 0
                elif response.status == 206 and have:
                    start = _range_start(response.headers.get("Content-Range"))
                    if start != have:
                        raise _Restart(f"hub answered range from byte {start}, asked for {have}")
                    self.resumed_from = have
                    log.info("resuming download of %s at byte %d of %d", part.name, have, model.size)
                else:
                    raise DownloadError(f"unexpected HTTP {response.status} for {model.url}")
                fresh = have == 0
                have = await self._stream(response, part, have=have, digest=digest, model=model, progress=progress)
        if have != model.size:
            raise DownloadError(f"artifact ended at {have} bytes, expected {model.size}")
        actual = digest.hexdigest()
        if actual != model.sha256:
            if fresh:  # every byte came from the hub in this attempt: it serves other bytes than announced
                await asyncio.to_thread(part.unlink, True)
                raise IntegrityError(f"sha256 of the artifact is {actual}, desired state says {model.sha256}")
            raise _Restart(f"sha256 of the artifact is {actual}, desired state says {model.sha256}")
        await asyncio.to_thread(_commit, part, self.final_path(model.sha256))

    async def _stream(
        self,
        response: aiohttp.ClientResponse,
        part: Path,
        *,
        have: int,
        digest: hashlib._Hash,
        model: DesiredModel,
        progress: Progress | None,
    ) -> int:
        fd = await asyncio.to_thread(os.open, part, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            await asyncio.to_thread(os.ftruncate, fd, have)
            os.lseek(fd, have, os.SEEK_SET)
            first = True
            async for chunk in response.content.iter_chunked(self.settings.chunk_bytes):
                if have + len(chunk) > model.size:
                    raise _Restart(f"hub sent more than the {model.size} bytes announced")
                await asyncio.to_thread(_write_all, fd, chunk)
                digest.update(chunk)
                have += len(chunk)
                if progress is not None:
                    progress(have, model.size)
                if first:
                    first = False
                    await checkpoint("download")
        finally:
            os.close(fd)
        return have


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _range_start(header: str | None) -> int | None:
    """First byte of `Content-Range: bytes a-b/n`."""
    if not header or not header.startswith("bytes "):
        return None
    try:
        return int(header[6:].split("-", 1)[0])
    except ValueError:
        return None


def _commit(part: Path, final: Path) -> None:
    fd = os.open(part, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, final)
    fsync_dir(final.parent)
