"""`cloud-hub models push|list|show|trust-key`: the model registry through the API."""

from __future__ import annotations

import argparse
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from cloud_hub.cli import render
from cloud_hub.cli.client import HubClient
from cloud_hub.errors import ConfigError, HubError

CHUNK = 1 << 20


def add_parser(sub: Any, client_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `models ...` on the top-level sub-parsers."""
    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="action", required=True)
    push = models.add_parser("push", help="upload a package (directory or .tar); the hub verifies and re-signs it")
    push.add_argument("package", type=Path)
    push.add_argument("--allow-unsigned", action="store_true", help="accept a package without a publisher signature")
    client_flags(push)
    listing = models.add_parser("list", help="pushed model versions")
    listing.add_argument("--name", help="only this model")
    client_flags(listing)
    show = models.add_parser("show", help="one version with its manifest")
    show.add_argument("name")
    show.add_argument("version")
    client_flags(show)
    trust = models.add_parser("trust-key", help="trust packages signed by this ed25519 public key (PEM file)")
    trust.add_argument("public_key", type=Path)
    client_flags(trust)


def run(args: argparse.Namespace, client: HubClient, console: Console) -> int:
    """Dispatch a `models` command."""
    if args.action == "push":
        return _push(args, client, console)
    if args.action == "trust-key":
        result = client.request("POST", "/api/v1/publishers", {"public_key_pem": args.public_key.read_text()})
        if args.json:
            render.print_json(result)
        else:
            console.print(f"trusting packages signed by key {result['key_id']}")
        return 0
    if args.action == "show":
        model = client.request("GET", f"/api/v1/models/{args.name}/{args.version}")["model"]
        if args.json:
            render.print_json(model)
        else:
            console.print(models_table([model]))
            console.print(f"url: {model['url']}")
        return 0
    query = f"?name={args.name}" if args.name else ""
    listed = client.request("GET", f"/api/v1/models{query}")["models"]
    if args.json:
        render.print_json(listed)
    else:
        console.print(models_table(listed))
    return 0


def models_table(models: list[dict[str, Any]]) -> Table:
    """name, version, sha256, size, pushed at, publisher."""
    table = Table(title=f"{len(models)} model versions")
    for col in ("name", "version", "sha256", "size", "pushed", "publisher key"):
        table.add_column(col)
    for m in models:
        table.add_row(
            m["name"],
            m["version"],
            m["sha256"][:16],
            f"{m['size'] / 1e6:.2f} MB",
            render.when(m["pushed_at"]),
            m["publisher_key_id"] or "unsigned",
        )
    return table


def _push(args: argparse.Namespace, client: HubClient, console: Console) -> int:
    source: Path = args.package
    if not source.exists():
        raise ConfigError(f"package {str(source)!r} does not exist")
    with tempfile.TemporaryDirectory(prefix="cloud-hub-push-") as tmp:
        tar = source
        if source.is_dir():
            from models.errors import ModelsError
            from models.package import pack_tar

            try:
                tar = pack_tar(source, Path(tmp) / "package.tar")
            except ModelsError as exc:
                raise HubError(f"cannot pack {source}: {exc}") from exc
        result = upload(client, tar, allow_unsigned=args.allow_unsigned, console=None if args.json else console)
    if args.json:
        render.print_json(result)
    else:
        m = result["model"]
        verb = "pushed" if result["created"] else "already there:"
        console.print(f"{verb} {m['name']} {m['version']} sha256 {m['sha256']} ({m['size']} bytes), signed by the hub")
    return 0


def upload(
    client: HubClient, tar: Path, *, allow_unsigned: bool = False, console: Console | None = None
) -> dict[str, Any]:
    """Stream a package tar to POST /api/v1/models (with a progress bar on `console`); the JSON answer."""
    size = tar.stat().st_size
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        disable=console is None,
    )

    def chunks(task: Any) -> Iterator[bytes]:
        with open(tar, "rb") as fh:
            while chunk := fh.read(CHUNK):
                progress.advance(task, len(chunk))
                yield chunk

    query = "?allow_unsigned=1" if allow_unsigned else ""
    with progress:
        task = progress.add_task(f"upload {tar.name}", total=size)
        req = urllib.request.Request(  # noqa: S310  # the operator's hub URL (https)
            f"{client.url}/api/v1/models{query}",
            data=chunks(task),
            method="POST",
            headers={
                "Authorization": f"Bearer {client.token}",
                "Content-Type": "application/x-tar",
                "Content-Length": str(size),
            },
        )
        return client.send(req, 600.0)
