"""Claims page: every claim (never its token), a form to make one (its token shown once), revocation."""

from __future__ import annotations

import time

from aiohttp import web

from cloud_hub.api.keys import HUB_KEY
from cloud_hub.dashboard.auth import redirect
from cloud_hub.dashboard.html import PREFIX, Page, action, badge, csrf_field, e, labels, table, ts
from cloud_hub.dashboard.keys import SESSION_KEY
from cloud_hub.dashboard.live import View, live_page
from cloud_hub.errors import InvalidRequest
from cloud_hub.store import ClaimRecord
from cloud_hub.store.fleetview import parse_labels

routes = web.RouteTableDef()


def _state(claim: ClaimRecord, now: float) -> str:
    if claim.revoked_at is not None:
        return badge("revoked")
    if claim.expires_at <= now:
        return badge("expired")
    return badge("used up", "expired") if claim.uses_left <= 0 else badge("usable", "online")


def _create_form(view: View) -> str:
    return (
        f'<form method="post" action="{PREFIX}/claims" class="filters">{csrf_field(view.session)}'
        '<label>Labels <input name="labels" placeholder="site=berlin, fleet=demo"></label>'
        '<label>Uses <input name="uses" type="number" min="1" value="1"></label>'
        '<label>Valid for (hours) <input name="hours" type="number" min="1" value="168"></label>'
        '<button type="submit" data-action="create-claim">Create claim</button></form>'
    )


@routes.get("/claims")
@live_page
async def claims_page(view: View) -> Page:
    """Every claim, newest first, with revocation."""
    found = await view.hub.claims.list()
    now = time.time()
    rows = [
        [
            e(c.id),
            labels(c.labels),
            f"{c.uses_left} of {c.uses_total}",
            ts(c.expires_at),
            _state(c, now),
            ts(c.created_at),
            ""
            if c.revoked_at is not None
            else action(
                view.session,
                f"{PREFIX}/claims/{c.id}/revoke",
                "Revoke",
                confirm=f"Revoke claim {c.id}? Devices already provisioned keep working.",
                css="danger",
                name="revoke-claim",
            ),
        ]
        for c in found
    ]
    headers = ["claim", "labels", "uses left", "expires", "state", "created", ""]
    return Page(
        title="Claims",
        nav="claims",
        head=_create_form(view),
        regions={"claims-list": table(headers, rows, empty="no claims")},
    )


@routes.post("/claims")
async def create_claim(request: web.Request) -> web.StreamResponse:
    """Make a claim; its token and join line are shown once, on the next page."""
    form = await request.post()
    try:
        pairs = dict(parse_labels(str(form.get("labels", "")).replace(",", " ").split()))
        uses, hours = int(str(form.get("uses", "1"))), float(str(form.get("hours", "168")))
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    created = await request.config_dict[HUB_KEY].claims.create(pairs, uses, hours * 3600)
    session = request[SESSION_KEY]
    session.say("ok", f"claim {created.claim.id} created; its token is shown this once. On the device run:")
    session.say("token", created.join_command)
    return redirect(f"{PREFIX}/claims")


@routes.post("/claims/{claim_id}/revoke")
async def revoke_claim(request: web.Request) -> web.StreamResponse:
    """Stop a claim from provisioning more devices."""
    claim = await request.config_dict[HUB_KEY].claims.revoke(request.match_info["claim_id"])
    request[SESSION_KEY].say("ok", f"claim {claim.id} revoked")
    return redirect(f"{PREFIX}/claims")
