"""`cloud-hub serve`: run until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from cloud_hub.api import serve_hub
from cloud_hub.config import HubConfig


def config_from_args(args: argparse.Namespace) -> HubConfig:
    """HubConfig from the serve flags (flags left unset keep the config's defaults)."""
    values: dict[str, Any] = {
        "data_dir": args.data_dir,
        "database_url": args.db,
        "host": args.host,
        "port": args.port,
        "public_url": args.public_url,
        "server_names": tuple(args.server_name),
        "brokers": tuple(args.broker),
        "device_broker_url": args.device_broker_url,
        "broker_cafile": args.broker_ca,
        "topic_prefix": args.prefix,
        "share_group": args.share_group,
        "telemetry_interval_s": args.telemetry_interval,
    }
    return HubConfig(**{k: v for k, v in values.items() if v is not None})


async def _serve(config: HubConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve_hub(config) as hub:
        print(f"edgefleet hub at {hub.url}  CA sha256 {hub.identity.ca.fingerprint}", flush=True)
        await stop.wait()


def run_serve(args: argparse.Namespace) -> int:
    """Run the hub in the foreground."""
    asyncio.run(_serve(config_from_args(args)))
    return 0
