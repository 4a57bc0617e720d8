"""`cloud-hub serve [--config hub.toml]`: the config from the file, the flags given on top; run until
SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from cloud_hub.config import HubConfig, load_config

DATA_DIR_ENV = "EDGEFLEET_HUB_DATA_DIR"


def add_parser(sub: Any) -> None:
    """The `serve` sub-command. Flags default to None: only those given override the config file."""
    serve = sub.add_parser("serve", help="run the hub (HTTPS API, provisioning, MQTT ingest)")
    serve.add_argument(
        "--config", type=Path, help="TOML file with any HubConfig field (docs/hub.md); flags given override it"
    )
    serve.add_argument(
        "--db",
        default=os.environ.get("EDGEFLEET_HUB_DB"),
        help="database URL: sqlite:///PATH (default in the data dir) or postgresql://... "
        "(env EDGEFLEET_HUB_DB: preferred, it keeps the password off the command line)",
    )
    serve.add_argument("--host", default=None, help="HTTPS bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="HTTPS port (default 8443)")
    serve.add_argument("--public-url", help="https://host:port that devices use (default from --host/--port)")
    serve.add_argument("--server-name", action="append", default=[], help="extra SAN for the HTTPS certificate")
    serve.add_argument("--broker", action="append", default=[], help="broker to ingest from, mqtts://host:port")
    serve.add_argument("--device-broker-url", help="broker URL given to devices (default the first --broker)")
    serve.add_argument("--broker-ca", type=Path, help="CA of the brokers' server certificates (default hub CA)")
    serve.add_argument(
        "--broker-authz",
        choices=("dynsec", "acl"),
        default=None,
        help="how the brokers authorise: dynsec (default; the hub keeps their dynamic-security registry) or acl",
    )
    serve.add_argument(
        "--mqtt-identity", default=None, help="this replica's MQTT certificate CN (default edgefleet-hub)"
    )
    serve.add_argument("--prefix", default=None, help="MQTT topic prefix (default edgefleet/v1)")
    serve.add_argument("--share-group", default=None, help="shared-subscription group of the replicas")
    serve.add_argument("--telemetry-interval", type=float, default=None, help="report period for devices (s)")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The HubConfig fields the command line sets: flags given (and the data dir / db from env or flag)."""
    data_dir_given = getattr(args, "data_dir_given", False) or DATA_DIR_ENV in os.environ
    values: dict[str, Any] = {
        "data_dir": args.data_dir if data_dir_given or args.config is None else None,
        "database_url": args.db,
        "host": args.host,
        "port": args.port,
        "public_url": args.public_url,
        "server_names": tuple(args.server_name) or None,
        "brokers": tuple(args.broker) or None,
        "device_broker_url": args.device_broker_url,
        "broker_cafile": args.broker_ca,
        "broker_authz": args.broker_authz,
        "mqtt_identity": args.mqtt_identity,
        "topic_prefix": args.prefix,
        "share_group": args.share_group,
        "telemetry_interval_s": args.telemetry_interval,
    }
    return {k: v for k, v in values.items() if v is not None}


def config_from_args(args: argparse.Namespace) -> HubConfig:
    """HubConfig from `--config` (if given) with the flags given on top (flags left unset keep the file's)."""
    return load_config(args.config, overrides_from_args(args))


def run_serve(args: argparse.Namespace) -> int:
    """Run the hub in the foreground."""
    import asyncio

    from cloud_hub.app import run

    asyncio.run(run(config_from_args(args)))
    return 0
