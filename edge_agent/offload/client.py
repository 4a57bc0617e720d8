"""A V2 HTTP client for one cloud pool: keep-alive aiohttp session, binary tensors, per-request timeout."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import numpy as np

from edge_agent.errors import AgentError
from protocols.binary import HEADER_LENGTH, decode_response, encode_request
from protocols.common import ProtocolError
from protocols.messages import PoolEndpoint

__all__ = ["PoolClient", "PoolError"]

logger = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray[Any, Any]]
_OCTET = "application/octet-stream"
_HEALTH_TIMEOUT_S = 1.0


class PoolError(AgentError):
    """A pool did not answer a request: `busy` (it said 503) or failed (error, timeout, refused)."""

    def __init__(self, message: str, *, busy: bool = False, timed_out: bool = False) -> None:
        super().__init__(message)
        self.busy = busy
        self.timed_out = timed_out


class PoolClient:
    """Talks V2 to one pool over a keep-alive session; created and closed inside the running loop."""

    def __init__(self, endpoint: PoolEndpoint, *, connect_timeout_s: float, max_connections: int) -> None:
        self.endpoint = endpoint
        self._base = endpoint.url.rstrip("/")
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def serves(self, model: str) -> bool:
        """True if the pool serves `model` (an empty model list means every local model)."""
        return not self.endpoint.models or model in self.endpoint.models

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=60.0)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        return self._session

    async def infer(
        self,
        model: str,
        version: str | None,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        outputs: Sequence[str] | None,
        timeout_s: float,
    ) -> Tensors:
        """Run one request on the pool within `timeout_s` (also sent as Triton's `timeout`, microseconds)."""
        timeout_us = max(1, int(timeout_s * 1e6))
        body, length = encode_request(inputs=inputs, outputs=outputs, parameters={"timeout": timeout_us})
        headers = {"Content-Type": _OCTET}
        if length is not None:
            headers[HEADER_LENGTH] = str(length)
        path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(self._connect_timeout_s, timeout_s))
        try:
            async with self._get_session().post(self._base + path, data=body, headers=headers, timeout=timeout) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise PoolError(
                        f"pool {self.endpoint.name} answered {resp.status}: {raw[:200]!r}", busy=resp.status == 503
                    )
                header = resp.headers.get(HEADER_LENGTH)
                _, arrays = decode_response(raw, None if header is None else int(header))
        except TimeoutError as exc:
            raise PoolError(f"pool {self.endpoint.name} timed out after {timeout_s:.3f} s", timed_out=True) from exc
        except (aiohttp.ClientError, ProtocolError, ValueError) as exc:
            raise PoolError(f"pool {self.endpoint.name} failed: {exc!r}") from exc
        if outputs is not None:
            missing = [n for n in outputs if n not in arrays]
            if missing:
                raise PoolError(f"pool {self.endpoint.name} did not return output(s) {missing}")
        return arrays

    async def ready(self) -> bool:
        """GET /v2/health/ready: True on 200."""
        timeout = aiohttp.ClientTimeout(total=_HEALTH_TIMEOUT_S)
        try:
            async with self._get_session().get(self._base + "/v2/health/ready", timeout=timeout) as resp:
                await resp.read()
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError) as exc:
            logger.debug("pool %s health probe failed: %s", self.endpoint.name, exc)
            return False

    async def aclose(self) -> None:
        """Close the keep-alive session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        await asyncio.sleep(0)
