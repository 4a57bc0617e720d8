"""Dashboard benchmark: how long the fleet overview (`GET /ui/`, logged in) takes with 5,000 devices in the
store, against a budget of 200 ms.

Run: `python -m bench.dashboard [--devices N] [--requests R] [--no-postgres]` (or `python -m bench`). Prints
one line per database: `dashboard: db=sqlite devices=5000 overview_ms_median=... overview_ms_p95=...
filtered_ms_median=... page50_ms_median=... median/budget=... loadavg=...`

Set-up: the hub in this process (`serve_hub`: its HTTPS listener with the dashboard mounted, no broker),
N device rows written straight into its database as provisioning and ingest leave them (20 sites, 90 %
online, 2 % revoked, two pipelines with a last load report each, one installed model), one login through
the login form. Then R sequential requests over one keep-alive HTTPS connection, timed at the client
from request to the last byte of the page: the whole overview (counts, load per pipeline over every online
device, label choices, the first 100 rows), one filtered by a label, and page 50. Not asserted anywhere:
measured and printed (the figure in docs/dashboard.md says where it was measured).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._pg import PG_URL, pg_database
from bench._proc import loadavg

BUDGET_MS = 200.0


def _pipeline(model: str, version: str, rps: float, p99_ms: float, *routes: int) -> dict[str, Any]:
    local, cloud = routes
    return {"model": model, "version": version, "rps": rps, "p50_ms": p99_ms / 3, "p99_ms": p99_ms,
            "errors": 0, "local": local, "cloud": cloud, "rejected": 1, "expired": 0}  # fmt: skip


def device_rows(n: int) -> list[dict[str, Any]]:
    """N devices as the store holds them after provisioning and a few load reports."""
    now = time.time()
    rows = []
    for i in range(n):
        pipelines = {
            "detect": _pipeline("tiny-cnn", "2" if i % 3 else "1", 10.0 + i % 7, 8.0 + i % 11, 100, i % 5),
            "classify": _pipeline("mobilenet-v2", "1", 2.5, 30.0 + i % 13, 25, 0),
        }
        rows.append(
            {
                "id": f"dev-{i:05d}", "labels": {"site": f"site-{i % 20:02d}", "fleet": "bench", "tier": f"t{i % 3}"},
                "hardware": {"platform": "x86_64-cpu", "model": "bench", "cpu_count": 4, "ram_mb": 8192},
                "claim_id": "clm-bench", "cert_serial": f"{i + 1:x}", "cert_fingerprint": "0" * 64,
                "cert_not_after": now + 86_400, "status": "revoked" if i % 50 == 49 else "active",
                "online": i % 10 != 9, "last_seen": now, "boot_id": "boot", "last_seq": 100,
                "last_load": {"sent_at": now, "interval_s": 10.0, "pipelines": pipelines,
                              "device": {"cpu_percent": 12.5, "ram_used_mb": 900, "ram_total_mb": 8192,
                                         "gpu_source": "unavailable"}},
                "models": [{"name": "tiny-cnn", "version": "2", "active": True},
                           {"name": "mobilenet-v2", "version": "1", "active": True}],
                "agent_version": "0.1.0", "created_at": now, "provisioned_at": now,
            }
        )  # fmt: skip
    return rows


async def _timed(session: Any, url: str, ctx: ssl.SSLContext, requests: int, before: Any = None) -> list[float]:
    took = []
    for _ in range(requests):
        if before is not None:
            before()
        start = time.perf_counter()
        async with session.get(url, ssl=ctx, allow_redirects=False) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {url}: {resp.status} {body[:300]!r}")
        took.append((time.perf_counter() - start) * 1000)
    return took


async def _login(session: Any, url: str, ctx: ssl.SSLContext, token: str) -> None:
    async with session.get(url + "/ui/login", ssl=ctx) as resp:
        found = re.search(r'name="nonce" value="([^"]+)"', await resp.text())
    assert found, "no login form"
    form = {"nonce": found.group(1), "token": token, "next": "/ui/"}
    async with session.post(url + "/ui/login", data=form, ssl=ctx, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()


async def measure(db_url: str, data_dir: Path, devices: int, requests: int) -> dict[str, list[float]]:
    """Milliseconds per request: the overview with nothing cached, cached, label-filtered, page 50."""
    import aiohttp
    from aiohttp import web

    from cloud_hub.api import build_app
    from cloud_hub.app import Hub
    from cloud_hub.config import HubConfig
    from cloud_hub.dashboard import mount_dashboard
    from cloud_hub.dashboard.keys import TOTALS_KEY
    from cloud_hub.store import schema
    from deploy.local.procs import free_port

    config = HubConfig(data_dir=data_dir, database_url=db_url, port=free_port())
    # What serve_hub does, keeping the dashboard's handle so the cold runs can empty its cache.
    async with Hub(config, ingest=False) as hub:
        rows = device_rows(devices)
        async with hub.store.begin() as conn:
            for i in range(0, len(rows), 1000):
                await conn.execute(schema.devices.insert(), rows[i : i + 1000])
        app = build_app(hub)
        dashboard = mount_dashboard(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", config.port, ssl_context=hub.identity.server_ssl_context())
            await site.start()
            url = f"https://127.0.0.1:{config.port}"
            ctx = ssl.create_default_context(cafile=str(hub.identity.paths.ca_cert))
            token = hub.identity.paths.operator_token.read_text().strip()
            cold = dashboard[TOTALS_KEY].clear
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
                await _login(session, url, ctx, token)
                await _timed(session, url + "/ui/", ctx, 3)  # warm: connection, statement caches
                return {
                    "overview": await _timed(session, url + "/ui/", ctx, requests, cold),
                    "cached": await _timed(session, url + "/ui/", ctx, requests),
                    "filtered": await _timed(session, url + "/ui/?label=site%3Dsite-07", ctx, requests, cold),
                    "page50": await _timed(session, url + "/ui/?page=50", ctx, requests, cold),
                }
        finally:
            await runner.cleanup()


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def line(db: str, devices: int, took: dict[str, list[float]]) -> str:
    """The bench's one line for one database."""
    median = statistics.median(took["overview"])
    return (
        f"dashboard: db={db} devices={devices} overview_ms_median={median:.1f} "
        f"overview_ms_p95={_p95(took['overview']):.1f} cached_ms_median={statistics.median(took['cached']):.1f} "
        f"filtered_ms_median={statistics.median(took['filtered']):.1f} "
        f"page50_ms_median={statistics.median(took['page50']):.1f} median/budget={median / BUDGET_MS:.2f} "
        f"budget_ms={BUDGET_MS:.0f} requests={len(took['overview'])} loadavg={loadavg()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.dashboard")
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        took = asyncio.run(measure(f"sqlite:///{tmp}/hub.db", Path(tmp) / "sqlite", args.devices, args.requests))
        print(line("sqlite", args.devices, took), flush=True)
        if args.no_postgres:
            return 0
        name = f"bench_dashboard_{secrets.token_hex(4)}"
        try:
            pg_database("create", name)
        except OSError as exc:
            print(f"# PostgreSQL not reachable at {PG_URL} ({exc}): skipped", file=sys.stderr)
            return 0
        try:
            from sqlalchemy.engine import make_url

            url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
            took = asyncio.run(measure(url, Path(tmp) / "postgres", args.devices, args.requests))
            print(line("postgres", args.devices, took), flush=True)
        finally:
            pg_database("drop", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
