"""Operator commands: claims and devices through the API; pki locally on the data dir."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from rich.console import Console

from cloud_hub.cli import models, render, rollouts
from cloud_hub.cli.args import parse_duration, parse_labels
from cloud_hub.cli.client import HubClient
from cloud_hub.errors import HubError


def run_command(args: argparse.Namespace) -> int:
    """Dispatch a claims/devices/pki command."""
    if args.command == "pki":
        return _broker_dynsec(args) if args.action == "broker-dynsec" else _broker_cert(args)
    client = HubClient.resolve(args.data_dir, args.hub, args.token, args.ca)
    console = Console()
    if args.command == "claims":
        return _claims(args, client, console)
    if args.command in ("models", "rollouts"):
        if args.command == "models":
            return models.run(args, client, console)
        return rollouts.run(args, client, console)
    return _devices(args, client, console)


def _claims(args: argparse.Namespace, client: HubClient, console: Console) -> int:
    if args.action == "create":
        body = {"labels": parse_labels(args.labels), "uses": args.uses, "expires_in_s": parse_duration(args.expires)}
        created = client.request("POST", "/api/v1/claims", body)
        if args.json:
            render.print_json(created)
        else:
            claim = created["claim"]
            console.print(
                f"claim {claim['id']}: {claim['uses_total']} uses, labels {render.labels(claim['labels'])}, "
                f"expires {render.when(claim['expires_at'])}. The token is shown only now. On each device run:"
            )
            # Plain print: the join line must stay one line that can be copied.
            print(created["join_command"])
        return 0
    if args.action == "revoke":
        result = client.request("POST", f"/api/v1/claims/{args.id}/revoke")
        if args.json:
            render.print_json(result)
        else:
            console.print(f"claim {args.id} revoked")
        return 0
    listed = client.request("GET", "/api/v1/claims")["claims"]
    if args.json:
        render.print_json(listed)
    else:
        console.print(render.claims_table(listed))
    return 0


def _devices(args: argparse.Namespace, client: HubClient, console: Console) -> int:
    if args.action == "list":
        query = "".join(f"&label={k}={v}" for k, v in parse_labels(args.label).items()).replace("&", "?", 1)
        listed = client.request("GET", f"/api/v1/devices{query}")["devices"]
        if args.json:
            render.print_json(listed)
        else:
            console.print(render.devices_table(listed))
        return 0
    if args.action == "drift":
        return _drift(args, client, console)
    if args.action == "show":
        device = client.request("GET", f"/api/v1/devices/{args.id}")["device"]
        if args.json:
            render.print_json(device)
        else:
            render.device_detail(device, console)
        return 0
    if args.action == "approve-reprovision":
        approved = client.request("POST", f"/api/v1/devices/{args.id}/approve-reprovision")
        if args.json:
            render.print_json(approved)
        else:
            console.print(f"device {args.id} may be re-provisioned once within the hour (old certificate retired)")
        return 0
    revoked = client.request("POST", f"/api/v1/devices/{args.id}/revoke")["device"]
    if args.json:
        render.print_json(revoked)
    else:
        console.print(
            f"device {revoked['id']} revoked; certificate serial {revoked['cert_serial']} is on the CRL. "
            "Reload the broker (SIGHUP / systemctl reload mosquitto) so new connections check it (docs/hub.md)."
        )
    return 0


def _drift(args: argparse.Namespace, client: HubClient, console: Console) -> int:
    if args.rebaseline:
        query = f"?pipeline={args.pipeline}" if args.pipeline else ""
        done = client.request("POST", f"/api/v1/devices/{args.rebaseline}/drift/rebaseline{query}")
        if args.json:
            render.print_json(done)
        else:
            console.print(f"device {args.rebaseline}: {done['rebaselined']} reference(s) rebuilt from the next reports")
        return 0
    rows = client.request("GET", "/api/v1/drift" + (f"?device={args.device}" if args.device else ""))["drift"]
    if args.json:
        render.print_json(rows)
        return 0
    for row in rows:
        psi = "-" if row["psi"] is None else f"{row['psi']:.3f}"
        flag = "DRIFT" if row["drifted"] else "ok"
        console.print(
            f"{row['device_id']}  {row['pipeline']}  {row['model']}:{row['version']}  psi {psi}  {flag}  "
            f"reference {row['reference']} ({row['reference_reports']} reports)",
            highlight=False,
        )
    if not rows:
        console.print("no drift profiles yet (devices report them with their load)")
    return 0


def _broker_cert(args: argparse.Namespace) -> int:
    from cloud_hub.pki import HubIdentity

    identity = HubIdentity.bootstrap(args.data_dir, None)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    identity.issue_keypair(
        "edgefleet-broker", out / "broker.pem", out / "broker.key", server=True, hosts=tuple(args.name)
    )
    shutil.copyfile(identity.paths.ca_cert, out / "edgefleet-ca.pem")
    # The broker's crlfile (on by default: mosquitto will not start without it): the hub's current CRL,
    # or an empty one from the CA before the hub has ever run.
    if identity.paths.crl.exists():
        shutil.copyfile(identity.paths.crl, out / "edgefleet.crl")
    else:
        identity.ca.write_crl(out / "edgefleet.crl", [])
    written = [out / "broker.pem", out / "broker.key", out / "edgefleet-ca.pem", out / "edgefleet.crl"]
    print(f"wrote {', '.join(map(str, written))} (the key 0600)")
    return 0


def _broker_dynsec(args: argparse.Namespace) -> int:
    """The plugin's seed: the hub role for every replica identity, deny by default, no device yet (each
    replica registers every device of the registry when it connects)."""
    import json

    from cloud_hub.broker import dynsec
    from cloud_hub.files import write_atomic
    from cloud_hub.pki.identity import HUB_CN

    out: Path = args.out
    if out.exists() and not args.force:
        # mosquitto rewrites this file with every change: replacing it would forget every registered device.
        print(f"kept {out} (it exists; --force replaces it)")
        return 0
    hubs = tuple(args.hub) or (HUB_CN,)
    bad = [h for h in hubs if not h.startswith(HUB_CN)]
    if bad:
        raise HubError(f"hub identities are edgefleet-hub or edgefleet-hub-*: {', '.join(bad)}")
    seed = dynsec.seed_config(args.prefix, hubs)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(seed, indent=1).encode(), 0o600)
    print(f"wrote {out} (hub identities: {', '.join(hubs)})")
    return 0
