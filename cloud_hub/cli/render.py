"""Rich tables for people, JSON for scripts."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table


def when(ts: float | None) -> str:
    """A Unix time as a short local date-time, or '-'."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: float | None) -> str:
    """How long ago, e.g. '12s', '5m', '3h'."""
    if ts is None:
        return "never"
    s = max(0.0, time.time() - ts)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def labels(value: dict[str, str]) -> str:
    """k=v,k=v."""
    return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"


def load(last_load: dict[str, Any] | None) -> str:
    """CPU and per-pipeline request rate and p99 of the latest report."""
    if not last_load:
        return "-"
    # Here, not at the top: importing cloud_hub.store loads SQLAlchemy, which `cloud-hub --help` need not wait for.
    from cloud_hub.store.summary import decode_summary

    dev = last_load.get("device", {})
    parts = [f"cpu {dev.get('cpu_percent', 0):.0f}%"]
    if dev.get("gpu_util_percent") is not None:
        parts.append(f"gpu {dev['gpu_util_percent']:.0f}%")
    for name, p in sorted(decode_summary(last_load.get("pipelines")).items()):
        p99 = "-" if p.p99_ms is None else f"{p.p99_ms:.0f}ms"
        parts.append(f"{name} {p.rps:.1f}/s p99 {p99}")
    return " ".join(parts)


def models(value: list[dict[str, Any]] | None) -> str:
    """name:version (active ones marked *)."""
    if not value:
        return "-"
    return " ".join(f"{m['name']}:{m['version']}{'*' if m.get('active') else ''}" for m in value)


def print_json(data: Any) -> None:
    """Machine-readable output."""
    print(json.dumps(data, indent=2, sort_keys=True))


def devices_table(devices: list[dict[str, Any]]) -> Table:
    """id, labels, status, online, last seen, load, model versions."""
    table = Table(title=f"{len(devices)} devices")
    for col in ("id", "labels", "status", "online", "last seen", "load", "models"):
        table.add_column(col)
    for d in devices:
        online = "[green]online[/]" if d["online"] else "[red]offline[/]"
        status = d["status"] if d["status"] == "active" else f"[red]{d['status']}[/]"
        table.add_row(d["id"], labels(d["labels"]), status, online, ago(d["last_seen"]), load(d["last_load"]),
                      models(d["models"]))  # fmt: skip
    return table


def claims_table(claims: list[dict[str, Any]]) -> Table:
    """id, labels, uses, expiry."""
    table = Table(title=f"{len(claims)} claims")
    for col in ("id", "labels", "uses left", "expires", "created", "state"):
        table.add_column(col)
    now = time.time()
    for c in claims:
        state = "revoked" if c["revoked_at"] else "expired" if c["expires_at"] <= now else "usable"
        if state == "usable" and c["uses_left"] == 0:
            state = "used up"
        table.add_row(c["id"], labels(c["labels"]), f"{c['uses_left']}/{c['uses_total']}", when(c["expires_at"]),
                      when(c["created_at"]), state)  # fmt: skip
    return table


def device_detail(device: dict[str, Any], console: Console) -> None:
    """Everything about one device."""
    table = Table(show_header=False, title=device["id"])
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("status", device["status"]),
        ("online", str(device["online"])),
        ("labels", labels(device["labels"])),
        ("last seen", f"{when(device['last_seen'])} ({ago(device['last_seen'])})"),
        (
            "boot id / seq",
            f"{device['boot_id'] or '-'} / {device['last_seq'] if device['last_seq'] is not None else '-'}",
        ),
        ("agent", device["agent_version"] or "-"),
        ("hardware", json.dumps(device["hardware"]) if device["hardware"] else "-"),
        ("load", load(device["last_load"])),
        ("models", models(device["models"])),
        ("certificate", f"serial {device['cert_serial']}, expires {when(device['cert_not_after'])}"),
        ("claim", device["claim_id"]),
        ("provisioned", when(device["provisioned_at"])),
        ("revoked", when(device["revoked_at"])),
        ("recent reports", str(len(device.get("recent_telemetry", [])))),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
