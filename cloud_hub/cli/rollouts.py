"""`cloud-hub rollouts create|get|list|pause|resume|abort`, with a live view (`get --follow`)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cloud_hub.cli import render
from cloud_hub.cli.args import parse_duration, parse_labels
from cloud_hub.cli.client import HubClient
from cloud_hub.errors import ConfigError

FINAL = {"completed", "rolled_back", "aborted"}


def _pct(text: str) -> float:
    return float(text.strip().rstrip("%"))


def add_parser(sub: Any, client_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `rollouts ...` on the top-level sub-parsers."""
    rollouts = sub.add_parser("rollouts", help="staged model rollouts").add_subparsers(dest="action", required=True)
    create = rollouts.add_parser("create", help="start a rollout of a pushed model version")
    create.add_argument("--model", required=True)
    create.add_argument("--version", required=True)
    create.add_argument("--selector", default="", help="k=v[,k=v]: devices whose labels include these")
    create.add_argument("--canary", type=int, default=1, help="devices in the first wave")
    create.add_argument("--waves", default="100%", help="cumulative percentages after the canary, e.g. 10%%,50%%,100%%")
    create.add_argument("--bake", default="60s", help="how long a settled wave is watched before the next")
    create.add_argument("--max-failures", default="0%", help="failed devices allowed, %% of those targeted so far")
    create.add_argument(
        "--min-failed", type=int, default=2, help="quorum: failed devices needed before the fleet is rolled back"
    )
    create.add_argument("--max-p99-increase", help="halt when a pipeline's p99 rises more than this %% over baseline")
    create.add_argument("--max-error-rate", help="halt when a device's error rate exceeds this %%")
    create.add_argument("--deadline", help="longest a wave waits for its online devices, e.g. 1h")
    steps = create.add_argument_group("steps (issue 16): each wave goes shadow -> split -> full")
    steps.add_argument("--shadow", help="shadow step first: %% of requests the candidate sees, e.g. 10%%")
    steps.add_argument("--split", help="split step: %% of requests the candidate answers, e.g. 5%%")
    steps.add_argument("--shadow-compare", choices=("auto", "top1", "max_abs_diff"), default="auto")
    steps.add_argument("--shadow-tolerance", type=float, default=1e-3, help="max abs diff that still agrees")
    steps.add_argument("--min-agreement", default="99%", help="shadow gate: halt below this agreement")
    steps.add_argument("--min-compared", type=int, default=100, help="shadow gate: comparisons per device first")
    steps.add_argument("--max-drift", type=float, help="drift gate: halt above this PSI vs the replaced version")
    steps.add_argument("--allow-safety-split", action="store_true", help="steps apply to safety pipelines too")
    create.add_argument("--apply", choices=("immediate", "safety_idle", "window"), default="immediate")
    create.add_argument("--window", help="HH:MM-HH:MM (UTC) with --apply window")
    client_flags(create)
    get = rollouts.add_parser("get", help="one rollout with per-wave and per-device progress")
    get.add_argument("id")
    get.add_argument("--follow", action="store_true", help="refresh until the rollout ends")
    client_flags(get)
    client_flags(rollouts.add_parser("list", help="every rollout"))
    for action, text in (("pause", "stop advancing"), ("resume", "carry on"), ("abort", "stop for good")):
        p = rollouts.add_parser(action, help=text)
        p.add_argument("id")
        if action == "abort":
            p.add_argument("--rollback", action="store_true", help="also revert every touched device")
        client_flags(p)


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /api/v1/rollouts body."""
    apply: dict[str, Any] = {"mode": args.apply}
    if args.apply == "window":
        if not args.window or "-" not in args.window:
            raise ConfigError("--apply window needs --window HH:MM-HH:MM (UTC)")
        apply["window_start_utc"], apply["window_end_utc"] = args.window.split("-", 1)
    try:
        return {
            "model": args.model,
            "version": args.version,
            "selector": parse_labels(args.selector),
            "canary": args.canary,
            "waves_pct": [_pct(w) for w in args.waves.split(",") if w.strip()],
            "bake_s": parse_duration(args.bake),
            "max_failures_pct": _pct(args.max_failures),
            "min_failed_devices": args.min_failed,
            "max_p99_increase_pct": _pct(args.max_p99_increase) if args.max_p99_increase else None,
            "max_error_rate_pct": _pct(args.max_error_rate) if args.max_error_rate else None,
            "deadline_s": parse_duration(args.deadline) if args.deadline else None,
            "apply": apply,
            "shadow_pct": _pct(args.shadow) if args.shadow else None,
            "split_pct": _pct(args.split) if args.split else None,
            "shadow_compare": args.shadow_compare,
            "shadow_tolerance": args.shadow_tolerance,
            "min_agreement_pct": _pct(args.min_agreement),
            "min_compared": args.min_compared,
            "max_drift_psi": args.max_drift,
            "allow_safety_split": args.allow_safety_split,
        }
    except ValueError as exc:
        raise ConfigError(f"invalid percentage: {exc}") from exc


def run(args: argparse.Namespace, client: HubClient, console: Console) -> int:
    """Dispatch a `rollouts` command."""
    if args.action == "create":
        rollout = client.request("POST", "/api/v1/rollouts", spec_from_args(args))["rollout"]
        _out(
            args,
            console,
            rollout,
            f"rollout {rollout['id']} created: {rollout['devices_total']} devices in {rollout['waves']} waves",
        )
        return 0
    if args.action in ("pause", "resume", "abort"):
        body = {"rollback": bool(args.rollback)} if args.action == "abort" else None
        rollout = client.request("POST", f"/api/v1/rollouts/{args.id}/{args.action}", body)["rollout"]
        _out(args, console, rollout, f"rollout {rollout['id']} is {rollout['state']}")
        return 0
    if args.action == "list":
        listed = client.request("GET", "/api/v1/rollouts")["rollouts"]
        if args.json:
            render.print_json(listed)
        else:
            console.print(list_table(listed))
        return 0
    detail = client.request("GET", f"/api/v1/rollouts/{args.id}")["rollout"]
    if args.json and not args.follow:
        render.print_json(detail)
        return 0
    if not args.follow:
        console.print(detail_view(detail))
        return 0
    with Live(detail_view(detail), console=console, refresh_per_second=4) as live:
        while detail["state"] not in FINAL:
            time.sleep(1.0)
            detail = client.request("GET", f"/api/v1/rollouts/{args.id}")["rollout"]
            live.update(detail_view(detail))
    if args.json:
        render.print_json(detail)
    return 0 if detail["state"] == "completed" else 1


def _out(args: argparse.Namespace, console: Console, rollout: dict[str, Any], text: str) -> None:
    if args.json:
        render.print_json(rollout)
    else:
        console.print(text)


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def list_table(rollouts: list[dict[str, Any]]) -> Table:
    """id, model:version, state, wave, device counts, created."""
    table = Table(title=f"{len(rollouts)} rollouts")
    for col in ("id", "model", "state", "wave", "devices", "created", "reason"):
        table.add_column(col)
    for r in rollouts:
        table.add_row(
            r["id"],
            f"{r['model']}:{r['version']}",
            _state(r["state"]),
            f"{r['wave'] + 1}/{r['waves']}",
            _counts(r["counts"]),
            render.when(r["created_at"]),
            r["reason"] or "",
        )
    return table


def _state(state: str) -> str:
    color = {"completed": "green", "rolled_back": "red", "aborted": "red", "paused": "yellow"}.get(state)
    return f"[{color}]{state}[/]" if color else state


def _gates(spec: dict[str, Any]) -> str:
    p99, errors = spec["max_p99_increase_pct"], spec["max_error_rate_pct"]
    p99_text = "off" if p99 is None else f"+{p99:g}%"
    errors_text = "off" if errors is None else f"<= {errors:g}%"
    return (
        f"failures <= {spec['max_failures_pct']:g}% (quorum {spec.get('min_failed_devices', 1)}), "
        f"p99 {p99_text}, error rate {errors_text}, bake {spec['bake_s']:g}s"
    )


def _steps(r: dict[str, Any]) -> str:
    spec = r["spec"]
    share = {"shadow": spec.get("shadow_pct"), "split": spec.get("split_pct")}
    names = [f"{s} {share[s]:g}%" if share.get(s) else s for s in r.get("stages", ["full"])]
    current = r.get("stage", "full")
    return " -> ".join(f"[bold]{n}[/]" if n.split()[0] == current else n for n in names)


def _step_gates(spec: dict[str, Any]) -> str:
    parts = []
    if spec.get("shadow_pct"):
        parts.append(
            f"agreement >= {spec['min_agreement_pct']:g}% over >= {spec['min_compared']} compared "
            f"({spec['shadow_compare']}, tolerance {spec['shadow_tolerance']:g})"
        )
    drift = spec.get("max_drift_psi")
    parts.append("drift off" if drift is None else f"drift PSI <= {drift:g}")
    return ", ".join(parts)


def _gate_values(g: dict[str, Any] | None) -> str:
    if not g:
        return "-"
    parts = []
    if g["compared"] or g["agreement_pct"] is not None:
        parts.append(f"agree {g['agreement_pct']:g}% ({g['agreed']}/{g['compared']})")
    if g["drift_psi"] is not None:
        parts.append(f"psi {g['drift_psi']:.3g} ({g['drift_part']})")
    if g["p99_ms"]:
        parts.append("p99 " + ",".join(f"{v:.1f}" for v in g["p99_ms"].values()) + " ms")
    if g["error_rate_pct"] is not None:
        parts.append(f"err {g['error_rate_pct']:g}% of {g['requests']}")
    return "; ".join(parts) or "-"


def detail_view(r: dict[str, Any]) -> Group:
    """Header, waves and devices of one rollout."""
    head = Table(show_header=False, title=f"rollout {r['id']}: {r['model']} {r['version']}")
    head.add_column("field", style="bold")
    head.add_column("value")
    spec = r["spec"]
    rows = [
        ("state", _state(r["state"]) + (f"  ({r['reason']})" if r["reason"] else "")),
        ("wave", f"{r['wave'] + 1}/{r['waves']} ({r['phase']})"),
        ("selector", render.labels(spec["selector"])),
        ("steps", _steps(r)),
        ("gates", _gates(spec)),
        ("step gates", _step_gates(spec)),
        ("devices", _counts(r["counts"])),
    ]
    for k, v in rows:
        head.add_row(k, v)
    waves = Table(title="waves")
    for col in ("wave", "devices"):
        waves.add_column(col)
    for w in r["waves_detail"]:
        waves.add_row(f"{w['wave'] + 1}{' (canary)' if w['canary'] else ''}", _counts(w["counts"]))
    devices = Table(title="devices")
    for col in ("device", "wave", "step", "status", "reported", "progress", "previous", "gate values", "error"):
        devices.add_column(col)
    for d in r["devices"]:
        progress = "-" if d["progress"] is None else f"{100 * d['progress']:.0f}%"
        online = "" if d["online"] is None else (" (online)" if d["online"] else " (offline)")
        devices.add_row(
            d["device_id"],
            str(d["wave"] + 1),
            d.get("stage") or "-",
            d["status"] + online,
            d["phase"] or "-",
            progress,
            d["previous_version"] or "-",
            _gate_values(d.get("gates")),
            d["error"] or "",
        )
    return Group(head, waves, devices)
