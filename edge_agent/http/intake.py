"""Request bodies: read raw, inflated off the event loop in bounded steps, capped, before a deadline.

aiohttp's own decompression inflates on the event loop, and `Request.read()` raises the stream's buffer to
`client_max_size` first, so one gzip bomb stalls every pipeline's intake. Here the app's handlers are built
with `auto_decompress=False` (see listener.handler_args): the compressed bytes arrive as they are, at most
aiohttp's read buffer (64 KiB, 128 KiB before the transport pauses) at a time; each chunk is inflated in a
worker thread (zlib releases the GIL) in steps of INFLATE_STEP output bytes, and the request fails with 413
as soon as the inflated size passes `max_body_bytes`. Peak memory per request: the cap plus one step.
"""

from __future__ import annotations

import asyncio
import zlib
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from edge_agent.config import HttpConfig
from edge_agent.errors import InvalidInput, PayloadTooLarge, Unavailable, UnsupportedMediaType

__all__ = ["INFLATE_STEP", "BodyLate", "BodyReader", "Inflater"]

INFLATE_STEP = 1 << 20  # output bytes per zlib call: the memory a body may take above the cap
_GZIP = ("gzip", "x-gzip")
_DEFLATE = ("deflate",)
_IDENTITY = ("", "identity")


class BodyLate(Unavailable):
    """The request's body was not complete by its deadline (HTTP 503): refused, never served late."""


def _too_large(limit: int, inflated: bool) -> PayloadTooLarge:
    what = "inflated request body" if inflated else "request body"
    return PayloadTooLarge(f"{what} is larger than the configured limit of {limit} bytes")


class Inflater:
    """Incremental gzip / deflate decoding into a capped buffer; `feed` may run in a worker thread.

    deflate is zlib-wrapped (RFC 1950) or, as some clients send it, raw (RFC 1951): sniffed from the first
    byte, as aiohttp does. Several gzip members in a row are one body (RFC 1952).
    """

    def __init__(self, encoding: str, limit: int, step: int = INFLATE_STEP) -> None:
        self._gzip = encoding in _GZIP
        self._limit = limit
        self._step = step
        self._zlib: zlib._Decompress | None = None
        self._members = 0
        self.body = bytearray()

    def feed(self, data: bytes) -> None:
        """Inflate one chunk of the compressed body; PayloadTooLarge once the output passes the limit."""
        body, step = self.body, self._step
        while True:
            if self._zlib is None:
                if not data:
                    return
                if self._members and not self._gzip:
                    raise InvalidInput("data after the end of the deflate body")
                wbits = 31 if self._gzip else (15 if data[0] & 0x0F == 8 else -15)
                self._zlib = zlib.decompressobj(wbits)
            stream = self._zlib
            try:
                piece = stream.decompress(data, step)
            except zlib.error as exc:
                raise InvalidInput(f"cannot inflate the request body: {exc}") from None
            body += piece
            if len(body) > self._limit:
                raise _too_large(self._limit, True)
            if stream.eof:
                data = stream.unused_data
                self._zlib = None
                self._members += 1
            else:
                data = stream.unconsumed_tail
                if not data and len(piece) < step:
                    return  # input used up and no output pending

    def finish(self) -> bytearray:
        """The inflated body; InvalidInput if the compressed stream was cut short."""
        if self._zlib is not None:
            raise InvalidInput("the compressed request body is truncated")
        return self.body


class BodyReader:
    """Reads request bodies for the handlers: size cap, Content-Encoding, deadline; owns the inflate workers."""

    def __init__(self, http: HttpConfig, *, workers: int = 2) -> None:
        self._limit = http.max_body_bytes
        self._inflate = http.compressed_bodies == "inflate"
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="edge-agent-inflate")
        return self._executor

    async def read(self, request: web.BaseRequest, *, deadline: float | None = None) -> bytes:
        """The request's (inflated) body. Raises PayloadTooLarge (413), UnsupportedMediaType (415),
        InvalidInput (400, a broken stream) or BodyLate (503) if it is not complete by `deadline` (loop time).
        """
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _IDENTITY + _GZIP + _DEFLATE:
            raise UnsupportedMediaType(f"Content-Encoding {encoding[:40]!r} is not supported (gzip, deflate)")
        inflate = encoding not in _IDENTITY and request.content.total_compressed_bytes is None
        if inflate and not self._inflate:
            raise UnsupportedMediaType("compressed request bodies are refused here (http.compressed_bodies)")
        declared = request.content_length
        if declared is not None and declared > self._limit:
            raise _too_large(self._limit, False)
        try:
            async with asyncio.timeout_at(deadline):
                return await (self._inflated(request, encoding) if inflate else self._plain(request))
        except TimeoutError:
            if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                raise BodyLate("deadline passed while the request body was being received") from None
            raise

    async def _plain(self, request: web.BaseRequest) -> bytes:
        chunks: list[bytes] = []
        size = 0
        content = request.content
        while chunk := await content.readany():
            chunks.append(chunk)
            size += len(chunk)
            if size > self._limit:
                raise _too_large(self._limit, False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _inflated(self, request: web.BaseRequest, encoding: str) -> bytes:
        inflater = Inflater(encoding, self._limit)
        loop = asyncio.get_running_loop()
        pool = self._pool()
        content = request.content
        raw = 0
        while chunk := await content.readany():
            raw += len(chunk)
            if raw > self._limit:
                raise _too_large(self._limit, False)
            await loop.run_in_executor(pool, inflater.feed, chunk)
        return bytes(inflater.finish())

    def close(self) -> None:
        """Stop the workers (a chunk being inflated finishes; nothing waits for it)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
