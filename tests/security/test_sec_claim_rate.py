"""Issue 15 item 7: claim guessing is rate-limited per source address (real hub over HTTPS).

A guesser fires wrong claim tokens as fast as it can; after the burst (10) every attempt is answered 429
with Retry-After before the hub parses the CSR or opens a transaction, and the failures it is allowed
grow only at the refill rate (1/s). Once the bucket refills, a real claim works again.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time
from pathlib import Path

import aiohttp
from devices_support import HARDWARE, make_csr
from sec_support import HubApi

from cloud_hub.app import Hub
from protocols.messages import ProvisionRequest

TRIES = 60


async def test_claim_guessing_is_rate_limited(hub: Hub, api: HubApi, tmp_path: Path) -> None:
    _, csr = make_csr()
    ctx = ssl.create_default_context(cafile=str(api.cafile))
    statuses: list[int] = []
    retry_after: set[str] = set()
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:

        async def attempt(token: str) -> int:
            body = ProvisionRequest(claim_token=token, csr_pem=csr, hardware=HARDWARE).model_dump_json()
            async with session.post(f"{api.url}/api/v1/provision", data=body, ssl=ctx) as resp:
                if resp.status == 429:
                    retry_after.add(resp.headers["Retry-After"])
                    assert "too many failed" in (await resp.json())["error"]
                return resp.status

        for _ in range(TRIES // 10):
            statuses += await asyncio.gather(*(attempt(f"efc_{secrets.token_urlsafe(32)}") for _ in range(10)))
        elapsed = time.monotonic() - started
        rate = TRIES / elapsed
        failures = statuses.count(401)
        print(f"claim guessing: {TRIES} tries in {elapsed:.2f} s ({rate:.0f}/s): {failures} checked (401), "
              f"{statuses.count(429)} refused at once (429), Retry-After {sorted(retry_after)}")  # fmt: skip
        assert set(statuses) <= {401, 429}
        assert failures <= 10 + elapsed * 1.0 + 1
        assert statuses.count(429) >= TRIES - failures and retry_after

        # A real claim from the locked-out address waits too; after Retry-After it provisions.
        status, created = await api.call("POST", "/api/v1/claims", {"uses": 1})
        assert status == 201
        assert await attempt(created["token"]) == 429
        await asyncio.sleep(max(int(v) for v in retry_after) + 0.2)
        assert await attempt(created["token"]) == 200
