"""Fleet pages: the overview (counts, load per pipeline, one page of devices, filtered by label, state and
id prefix) and one device (pipelines, p99, queue depth, last reports, reported and desired state, events)."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from cloud_hub.api.keys import HUB_KEY
from cloud_hub.dashboard.auth import redirect
from cloud_hub.dashboard.html import (
    DASH,
    PREFIX,
    Page,
    action,
    badge,
    dl,
    e,
    labels,
    link,
    num,
    pager,
    table,
    ts,
)
from cloud_hub.dashboard.keys import SESSION_KEY, TOTALS_KEY
from cloud_hub.dashboard.live import View, live_page
from cloud_hub.errors import InvalidRequest
from cloud_hub.store import fleetview
from cloud_hub.store.records import DeviceRecord
from cloud_hub.store.summary import PipelineSummary, decode_summary

routes = web.RouteTableDef()


def fleet_filter(view: View) -> fleetview.FleetFilter:
    """The filter of the overview's query: `label=k=v` (repeatable) or `labels=k=v, k=v`, `state`, `q`."""
    query = view.request.query
    items = list(query.getall("label", []))
    items += [part for part in query.get("labels", "").replace(",", " ").split() if part]
    try:
        pairs = fleetview.parse_labels(items)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    state = query.get("state", "all")
    return fleetview.FleetFilter(
        labels=pairs,
        state=state if state in fleetview.STATES else "all",
        id_prefix=query.get("q", "").strip(),
    )


def _filter_form(f: fleetview.FleetFilter, pairs: list[tuple[str, str]]) -> str:
    options = "".join(f'<option value="{e(k)}={e(v)}">' for k, v in pairs)
    states = "".join(f'<option value="{s}"{" selected" if s == f.state else ""}>{s}</option>' for s in fleetview.STATES)
    chosen = ", ".join(f"{k}={v}" for k, v in f.labels)
    return (
        f'<form method="get" action="{PREFIX}/" class="filters">'
        f'<label>Labels <input name="labels" list="label-pairs" value="{e(chosen)}"'
        ' placeholder="site=berlin, fleet=demo">'
        f'</label><datalist id="label-pairs">{options}</datalist>'
        f'<label>State <select name="state">{states}</select></label>'
        f'<label>Id starts with <input name="q" value="{e(f.id_prefix)}"></label>'
        '<button type="submit">Filter</button></form>'
    )


def _counts(c: fleetview.Counts) -> str:
    cards = [("devices", c.total, "total"), ("online", c.online, "online"), ("offline", c.offline, "offline")]
    cards.append(("revoked", c.revoked, "revoked"))
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card card-{kind}"><span class="figure" data-count="{kind}">{n}</span>{e(name)}</div>'
            for name, n, kind in cards
        )
        + "</div>"
    )


def _pipelines(totals: list[fleetview.PipelineTotal]) -> str:
    rows = [
        [
            e(t.pipeline),
            e(t.model),
            e(t.version),
            str(t.devices),
            num(t.rps),
            num(t.p99_ms_max),
            str(t.local),
            str(t.cloud),
            str(t.rejected + t.expired),
            str(t.errors),
        ]
        for t in totals
    ]
    headers = ["pipeline", "model", "version", "devices", "req/s", "worst p99 ms", "local", "cloud", "rejected"]
    return "<h2>Load per pipeline (online devices, last report)</h2>" + table(
        [*headers, "errors"], rows, empty="no load reported"
    )


def _pipes(record: DeviceRecord) -> dict[str, PipelineSummary]:
    return decode_summary((record.last_load or {}).get("pipelines"))


def _versions(record: DeviceRecord) -> str:
    models = record.models or []
    if not models:
        return DASH
    return " ".join(
        f'<span class="version{" active" if m.get("active") else ""}">{e(m.get("name"))} {e(m.get("version"))}</span>'
        for m in models
    )


def _state_badge(record: DeviceRecord) -> str:
    if record.status != "active":
        return badge(record.status)
    return badge("online") if record.online else badge("offline")


def _device_row(record: DeviceRecord) -> list[str]:
    pipes = _pipes(record).values()
    p99 = max((p.p99_ms for p in pipes if p.p99_ms is not None), default=None)
    routes = (sum(p.local for p in pipes), sum(p.cloud for p in pipes), sum(p.rejected + p.expired for p in pipes))
    return [
        link(f"{PREFIX}/devices/{record.id}", record.id),
        _state_badge(record),
        labels(record.labels),
        _versions(record),
        num(sum(p.rps for p in pipes)),
        num(p99),
        " / ".join(str(n) for n in routes) if pipes else DASH,
        ts(record.last_seen),
    ]


@routes.get("/")
@live_page
async def overview(view: View) -> Page:
    """The fleet: counts, load per pipeline, and one page of devices."""
    f = fleet_filter(view)
    size = view.settings.page_size
    number = view.query_int("page")
    async with view.hub.store.begin() as conn:
        counts = await fleetview.counts(conn, f)
        pages = max(1, math.ceil(counts.of(f.state) / size))
        number = min(number, pages)
        records = await fleetview.page(conn, f, offset=(number - 1) * size, limit=size)
        totals = await view.request.app[TOTALS_KEY].get(f, lambda: fleetview.pipeline_totals(conn, f))
        pairs = [] if view.streaming else await fleetview.label_pairs(conn)
    query: dict[str, Any] = {"label": [f"{k}={v}" for k, v in f.labels], "state": f.state, "q": f.id_prefix}
    headers = ["device", "state", "labels", "versions", "req/s", "p99 ms", "local / cloud / rejected", "last seen"]
    devices = table(headers, [_device_row(r) for r in records], css="devices", empty="no device matches")
    shown = f"<p class=hint>{len(records)} of {counts.of(f.state)} devices ({e(f.state)})</p>"
    return Page(
        title="Fleet",
        nav="fleet",
        head=_filter_form(f, pairs),
        regions={
            "fleet-counts": _counts(counts),
            "fleet-pipelines": _pipelines(totals),
            "fleet-devices": "<h2>Devices</h2>" + shown + devices + pager(f"{PREFIX}/", query, number, pages),
        },
    )


def _device_summary(device: dict[str, Any], record: DeviceRecord) -> str:
    hardware = device.get("hardware") or {}
    load = (record.last_load or {}).get("device") or {}
    facts = [
        ("state", _state_badge(record)),
        ("labels", labels(record.labels)),
        ("agent", e(record.agent_version)),
        (
            "hardware",
            e(" ".join(str(hardware[k]) for k in ("platform", "model", "gpu_name") if hardware.get(k)) or None),
        ),
        ("CPU %", num(load.get("cpu_percent"))),
        ("RAM MiB", f"{e(load.get('ram_used_mb'))} / {e(load.get('ram_total_mb'))}"),
        ("last seen", ts(record.last_seen)),
        ("boot / seq", f"{e(record.boot_id)} / {e(record.last_seq)}"),
        ("provisioned", ts(record.provisioned_at)),
        ("certificate", f"serial {e(record.cert_serial)}, until {ts(record.cert_not_after)}"),
    ]
    if record.revoked_at is not None:
        facts.append(("revoked", ts(record.revoked_at)))
    return dl(facts)


def _device_pipelines(record: DeviceRecord, queue_depth: dict[str, int]) -> str:
    rows = [
        [
            e(name),
            e(p.model),
            e(p.version),
            num(p.rps),
            num(p.p50_ms),
            num(p.p99_ms),
            e(queue_depth.get(name)),
            str(p.local),
            str(p.cloud),
            str(p.rejected),
            str(p.expired),
            str(p.errors),
        ]
        for name, p in sorted(_pipes(record).items())
    ]
    headers = ["pipeline", "model", "version", "req/s", "p50 ms", "p99 ms", "queue", "local", "cloud", "rejected"]
    return "<h2>Pipelines (last report)</h2>" + table([*headers, "expired", "errors"], rows, empty="no report yet")


def _reports(recent: list[dict[str, Any]]) -> str:
    rows = []
    for row in reversed(recent):
        for name, p in sorted(decode_summary(row.get("pipelines")).items()):
            routes = f"{p.local} / {p.cloud} / {p.rejected + p.expired}"
            rows.append(
                [
                    ts(row.get("received_at")),
                    e(row.get("seq")),
                    e(name),
                    e(p.version),
                    num(p.rps),
                    num(p.p99_ms),
                    routes,
                ]
            )
    headers = ["received", "seq", "pipeline", "version", "req/s", "p99 ms", "local / cloud / rejected"]
    return "<h2>Last reports</h2>" + table(headers, rows, empty="no report stored")


def _state(record: DeviceRecord, desired: Any) -> str:
    reported = record.reported or {}
    models = [
        [
            e(m.get("name")),
            e(m.get("version")),
            badge(str(m.get("state"))),
            e(m.get("active_version")),
            num(100 * m["progress"], 0) if m.get("progress") is not None else DASH,
            e(m.get("error")),
        ]
        for m in reported.get("models", [])
    ]
    want = DASH
    if desired is not None:
        want = f"revision {e(desired.revision)}: " + (
            ", ".join(f"{e(m.name)} {e(m.version)}" for m in desired.models) or "no models"
        )
        if desired.rollout_id:
            want += " (rollout " + link(f"{PREFIX}/rollouts/{desired.rollout_id}", desired.rollout_id) + ")"
    facts = dl(
        [
            ("desired", want),
            ("reported revision", e(reported.get("revision"))),
            ("converged", e(reported.get("converged"))),
            ("reported at", ts(reported.get("updated_at"))),
        ]
    )
    headers = ["model", "version", "state", "active version", "download %", "error"]
    return "<h2>Reported state</h2>" + facts + table(headers, models, empty="nothing reported")


def _events(view: View, device_id: str) -> str:
    live = view.hub.fleet.get(device_id)
    events = list(reversed(live.events)) if live is not None else []
    rows = [[ts(ev.at), badge(ev.level), e(ev.kind), e(ev.message), e(ev.version)] for ev in events]
    note = "<p class=hint>Events this hub replica received since it started.</p>"
    return "<h2>Events</h2>" + note + table(["at", "level", "kind", "message", "version"], rows, empty="no events")


@routes.get("/devices/{device_id}")
@live_page
async def device_page(view: View) -> Page:
    """One device."""
    device_id = view.request.match_info["device_id"]
    device = await view.hub.devices.show(device_id, history=10)
    record = DeviceRecord(**{k: v for k, v in device.items() if k != "recent_telemetry"})
    desired = await view.hub.desired.current(device_id)
    live = view.hub.fleet.get(device_id)
    queue = {p.name: p.queue_depth for p in live.load.pipelines} if live is not None and live.load else {}
    head = ""
    if record.status == "active":
        head = action(
            view.session,
            f"{PREFIX}/devices/{device_id}/revoke",
            "Revoke device",
            confirm=f"Revoke {device_id}? Its certificate goes on the CRL and it is cut off.",
            css="danger",
            name="revoke-device",
        )
    return Page(
        title=f"Device {device_id}",
        nav="fleet",
        head=head,
        regions={
            "device-summary": _device_summary(device, record),
            "device-pipelines": _device_pipelines(record, queue),
            "device-state": _state(record, desired),
            "device-reports": _reports(device.get("recent_telemetry", [])),
            "device-events": _events(view, device_id),
        },
    )


@routes.post("/devices/{device_id}/revoke")
async def revoke_device(request: web.Request) -> web.StreamResponse:
    """Revoke a device (the API's revocation: CRL, broker registry)."""
    device_id = request.match_info["device_id"]
    await request.config_dict[HUB_KEY].devices.revoke(device_id)
    request.app[TOTALS_KEY].clear()  # its load leaves the fleet's figures now, not at the cache's expiry
    request[SESSION_KEY].say("ok", f"device {device_id} revoked")
    return redirect(f"{PREFIX}/devices/{device_id}")
