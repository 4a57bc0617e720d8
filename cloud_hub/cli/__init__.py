"""`cloud-hub`: serve the hub, and operate it (claims, devices) through its API."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloud_hub.cli import serve as serve_cli
from cloud_hub.config import DEFAULT_DATA_DIR
from cloud_hub.errors import HubError

log = logging.getLogger("cloud_hub")


class _DataDir(argparse.Action):
    """Stores --data-dir and notes that it was given (`serve` then lets it override the config file)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.data_dir_given = True


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub", help="hub URL (env EDGEFLEET_HUB_URL; default from the data dir)")
    p.add_argument("--token", help="operator token (env EDGEFLEET_HUB_TOKEN; default from the data dir)")
    p.add_argument("--ca", type=Path, help="CA certificate to trust (env EDGEFLEET_HUB_CA; default the data dir's)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="cloud-hub", description="edgefleet cloud hub")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        action=_DataDir,
        help="hub data dir (env EDGEFLEET_HUB_DATA_DIR)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve_cli.add_parser(sub)

    claims = sub.add_parser("claims", help="provisioning claims").add_subparsers(dest="action", required=True)
    create = claims.add_parser("create", help="create a claim and print its join line")
    create.add_argument("--labels", default="", help="k=v[,k=v...] given to every device of the claim")
    create.add_argument("--uses", type=int, default=1, help="how many devices may use it")
    create.add_argument("--expires", default="7d", help="lifetime: 90s, 30m, 12h, 7d")
    _client_flags(create)
    _client_flags(claims.add_parser("list", help="list claims"))
    revoke_claim = claims.add_parser("revoke", help="stop a claim from provisioning more devices")
    revoke_claim.add_argument("id")
    _client_flags(revoke_claim)

    devices = sub.add_parser("devices", help="the device registry").add_subparsers(dest="action", required=True)
    listing = devices.add_parser("list", help="list devices")
    listing.add_argument("--label", action="append", default=[], help="filter k=v (repeatable)")
    _client_flags(listing)
    for action, text in (
        ("show", "show one device"),
        ("revoke", "revoke a device (CRL + ignored by ingest)"),
        ("approve-reprovision", "let a device id be re-provisioned once (1 h) without proof of its current key"),
    ):
        p = devices.add_parser(action, help=text)
        p.add_argument("id")
        _client_flags(p)

    drift = devices.add_parser("drift", help="drift per device, pipeline and version (PSI, threshold 0.2)")
    drift.add_argument("--device", help="only this device")
    drift.add_argument("--rebaseline", metavar="DEVICE", help="take DEVICE's next reports as the new reference")
    drift.add_argument("--pipeline", help="with --rebaseline: only this pipeline")
    _client_flags(drift)

    from cloud_hub.cli import models as models_cli
    from cloud_hub.cli import rollouts as rollouts_cli

    models_cli.add_parser(sub, _client_flags)
    rollouts_cli.add_parser(sub, _client_flags)

    pki = sub.add_parser("pki", help="local CA operations (on the hub host)").add_subparsers(
        dest="action", required=True
    )
    broker = pki.add_parser("broker-cert", help="issue the broker's TLS server certificate from the hub CA")
    broker.add_argument("--name", action="append", required=True, help="DNS name or IP of the broker (repeatable)")
    broker.add_argument("--out", type=Path, required=True, help="folder for broker.pem, broker.key, edgefleet-ca.pem")
    seed = pki.add_parser(
        "broker-dynsec", help="write the broker's first dynamic-security registry (the hub replicas' role)"
    )
    seed.add_argument("--out", type=Path, required=True, help="the plugin's plugin_opt_config_file")
    seed.add_argument(
        "--hub", action="append", default=[], help="MQTT identity of a hub replica (repeatable; default edgefleet-hub)"
    )
    seed.add_argument("--prefix", default="edgefleet/v1", help="MQTT topic prefix (default edgefleet/v1)")
    seed.add_argument("--force", action="store_true", help="replace an existing file (drops what the broker holds)")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `cloud-hub`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            return serve_cli.run_serve(args)
        from cloud_hub.cli.commands import run_command

        return run_command(args)
    except HubError as exc:
        print(f"cloud-hub: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
