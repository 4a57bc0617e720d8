"""Rollout pages: every rollout, one rollout (waves, gates, devices, halt or rollback reason), and the
operator's pause / resume / abort through the same service the API calls."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from cloud_hub.api.keys import HUB_KEY
from cloud_hub.dashboard.auth import redirect
from cloud_hub.dashboard.html import DASH, PREFIX, Page, action, badge, dl, e, link, num, pager, table, ts
from cloud_hub.dashboard.keys import SESSION_KEY
from cloud_hub.dashboard.live import View, live_page
from cloud_hub.dashboard.sessions import Session
from cloud_hub.errors import Conflict

routes = web.RouteTableDef()
STATUSES = ("waiting", "updating", "pending", "active", "failed", "rolled_back")


def controls(session: Session, rollout: dict[str, Any]) -> str:
    """The buttons that fit the rollout's state."""
    rid, state = rollout["id"], rollout["state"]
    base = f"{PREFIX}/rollouts/{rid}"
    out = []
    if state in ("pending", "running"):
        out.append(action(session, f"{base}/pause", "Pause", name="pause"))
    if state == "paused":
        out.append(action(session, f"{base}/resume", "Resume", name="resume"))
    if state not in ("completed", "rolled_back", "aborted"):
        out.append(
            action(session, f"{base}/abort", "Abort", confirm=f"Abort rollout {rid}?", css="danger", name="abort")
        )
        rollback = '<input type="hidden" name="rollback" value="1">'
        out.append(
            action(
                session,
                f"{base}/abort",
                "Abort and roll back",
                confirm=f"Abort rollout {rid} and revert every device it touched?",
                fields=rollback,
                css="danger",
                name="abort-rollback",
            )
        )
    return '<div class="controls">' + "".join(out) + "</div>" if out else ""


def _counts(counts: dict[str, int]) -> str:
    return " ".join(badge(f"{s} {counts[s]}", s) for s in STATUSES if counts.get(s)) or DASH


def _wave(r: dict[str, Any]) -> str:
    waves = r.get("waves") or 0
    return f"{min(r['wave'] + 1, waves)} / {waves}" if waves else DASH


@routes.get("/rollouts")
@live_page
async def rollouts_page(view: View) -> Page:
    """Every rollout, newest first, with its controls."""
    found = list(reversed(await view.hub.rollouts.list()))
    size = view.settings.page_size
    pages = max(1, math.ceil(len(found) / size))
    number = min(view.query_int("page"), pages)
    rows = [
        [
            link(f"{PREFIX}/rollouts/{r['id']}", r["id"]),
            f"{e(r['model'])} {e(r['version'])}",
            badge(r["state"]),
            _wave(r),
            e(r["phase"]),
            _counts(r.get("counts", {})),
            e(r.get("reason")),
            ts(r["created_at"]),
            controls(view.session, r),
        ]
        for r in found[(number - 1) * size : number * size]
    ]
    headers = ["rollout", "model", "state", "wave", "phase", "devices", "reason", "created", ""]
    hint = "<p class=hint>Start one with <code>cloud-hub rollouts create</code> or POST /api/v1/rollouts.</p>"
    return Page(
        title="Rollouts",
        nav="rollouts",
        head=hint,
        regions={
            "rollouts-list": table(headers, rows, empty="no rollouts") + pager(f"{PREFIX}/rollouts", {}, number, pages)
        },
    )


def _gates(spec: dict[str, Any]) -> str:
    p99, errors = spec.get("max_p99_increase_pct"), spec.get("max_error_rate_pct")
    return dl(
        [
            (
                "selector",
                e(", ".join(f"{k}={v}" for k, v in sorted(spec.get("selector", {}).items())) or "every device"),
            ),
            ("canary", e(spec.get("canary"))),
            ("waves", e(", ".join(f"{num(p, 0)} %" for p in spec.get("waves_pct", ())))),
            ("bake", f"{num(spec.get('bake_s'), 0)} s"),
            ("failures allowed", f"{num(spec.get('max_failures_pct'))} % (quorum {e(spec.get('min_failed_devices'))})"),
            ("p99 gate", DASH if p99 is None else f"+{num(p99)} % over the device's baseline"),
            ("error-rate gate", DASH if errors is None else f"{num(errors)} %"),
            ("wave deadline", DASH if spec.get("deadline_s") is None else f"{num(spec['deadline_s'], 0)} s"),
            ("apply", e((spec.get("apply") or {}).get("mode"))),
        ]
    )


def _summary(view: View, r: dict[str, Any]) -> str:
    facts = dl(
        [
            ("model", f"{e(r['model'])} {e(r['version'])}"),
            ("state", f'<span data-state="{e(r["state"])}">{badge(r["state"])}</span>'),
            ("wave", _wave(r)),
            ("phase", f"{e(r['phase'])} since {ts(r.get('phase_since'))}"),
            ("reason", f'<span class="reason">{e(r.get("reason"))}</span>'),
            ("devices", f"{r['devices_total']}: {_counts(r.get('counts', {}))}"),
            ("created / updated", f"{ts(r['created_at'])} / {ts(r['updated_at'])}"),
        ]
    )
    return controls(view.session, r) + facts


def _waves(r: dict[str, Any]) -> str:
    rows = [
        [
            str(w["wave"] + 1) + (" (canary)" if w.get("canary") else ""),
            badge("current", "current") if w["wave"] == r["wave"] and r["state"] in ("running", "paused") else "",
            _counts(w["counts"]),
        ]
        for w in r.get("waves_detail", [])
    ]
    return "<h2>Waves</h2>" + table(["wave", "", "devices"], rows)


def _devices(view: View, r: dict[str, Any]) -> str:
    status = view.request.query.get("status", "")
    devices = [d for d in r.get("devices", []) if not status or d["status"] == status]
    size = view.settings.page_size
    pages = max(1, math.ceil(len(devices) / size))
    number = min(view.query_int("page"), pages)
    rows = [
        [
            link(f"{PREFIX}/devices/{d['device_id']}", d["device_id"]),
            str(d["wave"] + 1),
            badge(d["status"]),
            DASH if d.get("online") is None else badge("online" if d["online"] else "offline"),
            e(d.get("phase")),
            num(100 * d["progress"], 0) if d.get("progress") is not None else DASH,
            e(d.get("previous_version")),
            ts(d.get("activated_at")),
            e(d.get("error")),
        ]
        for d in devices[(number - 1) * size : number * size]
    ]
    headers = ["device", "wave", "status", "link", "phase", "download %", "previous", "active since", "error"]
    query = {"status": status} if status else {}
    base = f"{PREFIX}/rollouts/{r['id']}"
    choices = " ".join(
        f"<strong>{e(s or 'any')}</strong>" if s == status else link(base + (f"?status={s}" if s else ""), s or "any")
        for s in ("", *STATUSES)
    )
    shown = f'<p class="hint">status: {choices} \u00b7 {len(devices)} devices</p>'
    return "<h2>Devices</h2>" + shown + table(headers, rows) + pager(base, query, number, pages)


@routes.get("/rollouts/{rollout_id}")
@live_page
async def rollout_page(view: View) -> Page:
    """One rollout: summary and controls, gates, waves, devices (filter `?status=`)."""
    r = await view.hub.rollouts.detail(view.request.match_info["rollout_id"])
    return Page(
        title=f"Rollout {r['id']}",
        nav="rollouts",
        regions={
            "rollout-summary": _summary(view, r),
            "rollout-gates": "<h2>Gates</h2>" + _gates(r["spec"]),
            "rollout-waves": _waves(r),
            "rollout-devices": _devices(view, r),
        },
    )


@routes.post("/rollouts/{rollout_id}/{action:pause|resume|abort}")
async def control(request: web.Request) -> web.StreamResponse:
    """pause, resume, abort (a `rollback` field reverts the touched devices); back to the rollout."""
    service = request.config_dict[HUB_KEY].rollouts
    rollout_id, verb = request.match_info["rollout_id"], request.match_info["action"]
    session = request[SESSION_KEY]
    try:
        if verb == "pause":
            await service.pause(rollout_id)
        elif verb == "resume":
            await service.resume(rollout_id)
        else:
            await service.abort(rollout_id, rollback=bool((await request.post()).get("rollback")))
    except Conflict as exc:  # e.g. it finished meanwhile: say so on the page, not on an error page
        session.say("error", str(exc))
    else:
        session.say("ok", f"rollout {rollout_id}: {verb} done")
    return redirect(f"{PREFIX}/rollouts/{rollout_id}")
