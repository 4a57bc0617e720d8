"""The terminal view: devices, routes and latency per pipeline, rollout progress, steps; and the summary."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cloud_hub.store.summary import decode_summary
from deploy.local.demo.state import DemoState, Step
from deploy.local.demo.traffic import Traffic

_STATUS_STYLE = {"ok": "green", "running": "cyan", "skipped": "yellow", "failed": "red"}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _versions(device: dict[str, Any]) -> str:
    models = device.get("models") or []
    parts = [
        f"{m.get('name')} v{m.get('version')}{'*' if m.get('active') else ''}" for m in models if isinstance(m, dict)
    ]
    return ", ".join(parts) or "-"


def _rps(pipelines: object) -> float:
    """Requests/s summed over a device's pipelines, from the hub's telemetry summary."""
    if not isinstance(pipelines, dict):
        return 0.0
    return sum(p.rps for p in decode_summary(pipelines).values())


def devices_table(state: DemoState) -> Table:
    """One row per device the hub knows."""
    table = Table(title="devices (hub API)", expand=True)
    for col in ("device", "labels", "online", "cpu %", "req/s", "models (* = active)", "rollout"):
        table.add_column(col)
    rollout_rows = {d["device_id"]: d for d in (state.rollout or {}).get("devices", [])}
    for device in state.devices:
        load = device.get("last_load") or {}
        rps = _rps(load.get("pipelines"))
        cpu = (load.get("device") or {}).get("cpu_percent")
        ro = rollout_rows.get(device["id"])
        table.add_row(
            device["id"],
            ",".join(f"{k}={v}" for k, v in sorted(device.get("labels", {}).items()) if k != "fleet"),
            Text("online", "green") if device.get("online") else Text("offline", "red"),
            "-" if cpu is None else f"{cpu:.0f}",
            f"{rps:.1f}" if load else "-",
            _versions(device),
            "-" if ro is None else f"w{ro['wave']} {ro['status']}",
        )
    return table


def pipelines_table(traffic: Traffic | None, *, live: bool = True) -> Table:
    """Routes and latency per pipeline, as the load generator saw them."""
    table = Table(title="pipelines (load generator)", expand=True)
    for col in ("device/pipeline", "class", "deadline", "sent", "local", "cloud", "rejected", "expired", "error"):
        table.add_column(col, justify="right" if col not in ("device/pipeline", "class") else "left")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("missed", justify="right")
    for stats in traffic.stats.values() if traffic else []:
        p50, p99 = stats.live() if live else (stats.to_json()["p50_ms"], stats.to_json()["p99_ms"])
        r = stats.routes
        agent = stats.agent_view
        extra = [] if live else ["-" if agent is None else f"{agent['within_deadline']}/{agent['requests']}"]
        table.add_row(
            stats.target.key,
            stats.target.priority,
            f"{stats.target.deadline_ms} ms",
            str(stats.sent),
            str(r["local"]),
            Text(str(r["cloud"]), "bold magenta" if r["cloud"] else ""),
            str(r["rejected"]),
            str(r["expired"]),
            Text(str(r["error"]), "red" if r["error"] else ""),
            _ms(p50),
            _ms(p99),
            Text(str(stats.missed_deadline), "red" if stats.missed_deadline else ""),
            *extra,
        )
    return table


def rollout_panel(state: DemoState) -> Panel:
    """State, wave and per-status counts of the rollout, and its timeline so far."""
    r = state.rollout
    if r is None:
        return Panel("no rollout yet", title="rollout")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(r.get("counts", {}).items()))
    head = (
        f"{r['id']}: {r['model']} -> v{r['version']}  state [bold]{r['state']}[/]  "
        f"wave {r['wave'] + 1}/{r['waves']} ({r['phase']})  devices: {counts}"
    )
    events = "  ".join(f"{e['at_s']:.0f}s {e['event']}" for e in state.timeline[-6:])
    return Panel(f"{head}\n{events}", title="rollout (hub API)")


def steps_panel(state: DemoState, last: int = 6) -> Panel:
    """The latest steps."""
    lines = Text()
    for step in state.steps[-last:]:
        lines.append(f"{step.at_s:5.1f}s ", "dim")
        lines.append(f"{step.status:<8}", _STATUS_STYLE[step.status])
        lines.append(f"{step.name}: {step.detail}\n")
    return Panel(lines, title=f"edgefleet demo - {state.phase} - {state.elapsed():.0f}s")


def live_view(state: DemoState, traffic: Traffic | None) -> RenderableType:
    """Everything, for rich's Live; a drawing problem shows as a line, it never stops the demo."""
    try:
        return Group(steps_panel(state), devices_table(state), pipelines_table(traffic), rollout_panel(state))
    except Exception as exc:  # the view reads hub JSON: an unexpected shape must not end the run
        return Group(steps_panel(state), Text(f"(live view: {type(exc).__name__}: {exc})", "red"))


def announce_line(step: Step) -> str:
    """One plain line per step (the --no-live output)."""
    return f"[{step.at_s:6.1f}s] {step.status:<7} {step.name}: {step.detail}"


def summary_view(summary: dict[str, Any], traffic: Traffic | None, state: DemoState) -> RenderableType:
    """The end-of-run summary: pipelines, rollout timeline, devices, skipped steps."""
    timeline = Table(title="rollout timeline", expand=False)
    timeline.add_column("t", justify="right")
    timeline.add_column("event")
    for event in summary["rollout"]["timeline"]:
        timeline.add_row(f"{event['at_s']:.1f}s", event["event"])
    if not summary["rollout"]["timeline"]:
        timeline.add_row("-", summary["rollout"].get("skipped") or "no rollout")
    devices = Table(title="devices provisioned", expand=False)
    for col in ("device", "labels", "serving"):
        devices.add_column(col)
    for device in state.devices:
        labels = ",".join(f"{k}={v}" for k, v in sorted(device["labels"].items()))
        devices.add_row(device["id"], labels, _versions(device))
    parts: list[RenderableType] = [pipelines_table(traffic, live=False), timeline, devices]
    verdict = Text()
    for check, ok in summary["checks"].items():
        verdict.append(f"{'PASS' if ok else 'FAIL'} ", "green" if ok else "red")
        verdict.append(f"{check}\n")
    for step in summary["skipped"]:
        verdict.append("SKIPPED ", "yellow")
        verdict.append(f"{step['name']}: {step['detail']}\n")
    parts.append(Panel(verdict, title=f"summary - {summary['duration_s']:.0f}s"))
    return Group(*parts)
