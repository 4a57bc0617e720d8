"""The dashboard over the hub's real HTTPS listener (serve_hub), on SQLite and PostgreSQL: login and its
cookie, what the pages show from the store, every route refusing a missing session and a forged CSRF token,
the live stream. The browser tests (tests/e2e/test_dashboard_browser.py) drive the same pages in Chromium."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from dashboard_support import Browser, add_devices, hub_ssl, operator_token, pipeline
from test_registry import zoo_tar

from cloud_hub.app import Hub
from cloud_hub.dashboard import build_dashboard
from cloud_hub.rollouts.model import RolloutSpec
from cloud_hub.store import devices
from models.zoo import ZOO_PUBLIC_KEY_FILE

FLEET = {
    "dev-a1": {"labels": {"site": "a", "fleet": "demo"}, "pipelines": {"detect": pipeline("1", 10.0, 8.0, 90, 8, 2)}},
    "dev-a2": {"labels": {"site": "a", "fleet": "demo"}, "pipelines": {"detect": pipeline("1", 5.0, 20.0, 50, 0, 0)}},
    "dev-b1": {"labels": {"site": "b", "fleet": "demo"}, "pipelines": {"detect": pipeline("2", 2.5, 4.0, 25, 0, 1)}},
    "dev-b2": {"labels": {"site": "b", "fleet": "demo"}, "online": False,
               "pipelines": {"detect": pipeline("1", 99.0, 99.0, 999, 0, 0)}},
    "dev-x": {"labels": {"site": "b"}, "status": "revoked", "online": False},
}  # fmt: skip


@pytest_asyncio.fixture
async def browser(hub: Hub) -> AsyncIterator[Browser]:
    jar = aiohttp.CookieJar(unsafe=True)  # the hub answers on 127.0.0.1: an IP, which the default jar skips
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        yield Browser(hub, session, hub_ssl(hub))


async def logged_in(browser: Browser) -> Browser:
    await browser.login(operator_token(browser.hub))
    return browser


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


async def test_login_sets_a_strict_session_cookie_and_keeps_the_token_out_of_pages(browser: Browser) -> None:
    status, _, resp = await browser.get("/ui/claims?x=1")
    assert status == 303 and resp.headers["Location"] == "/ui/login?next=%2Fui%2Fclaims%3Fx%3D1"
    status, _, resp = await browser.get("/")
    assert status == 303 and resp.headers["Location"] == "/ui/"

    status, page, _ = await browser.get("/ui/login")
    assert status == 200 and 'type="password" name="token"' in page
    nonce = re.search(r'name="nonce" value="([^"]+)"', page)
    assert nonce is not None
    bad = await browser.post("/ui/login", {"nonce": nonce.group(1), "token": "efo_wrong", "next": "/ui/"})
    assert bad[0] == 401 and "unknown token" in bad[1]

    token = operator_token(browser.hub)
    resp = await browser.login(token)
    assert resp.headers["Location"] == "/ui/"
    cookies = SimpleCookie()
    for header in resp.headers.getall("Set-Cookie"):
        cookies.load(header)
    session = cookies["edgefleet_session"]
    assert session["secure"] and session["httponly"] and session["samesite"] == "Strict"
    assert session["path"] == "/ui/" and int(session["max-age"]) > 0
    assert token not in session.value and token not in resp.headers.get("Location", "")

    for path in ("/ui/", "/ui/rollouts", "/ui/claims"):
        status, page, resp = await browser.get(path)
        assert status == 200, (path, page)
        assert token not in page
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["Cache-Control"] == "no-store"
    # Logged in, the login form sends the operator on; after logout the session is gone server-side too.
    assert (await browser.get("/ui/login"))[0] == 303
    csrf = await browser.csrf()
    assert (await browser.post("/ui/logout", {"csrf": csrf}))[0] == 303
    assert (await browser.get("/ui/"))[0] == 303


async def test_the_overview_counts_and_sums_the_store_and_filters_by_label(browser: Browser, hub: Hub) -> None:
    await add_devices(hub, FLEET)
    await logged_in(browser)
    status, page, _ = await browser.get("/ui/")
    assert status == 200
    counts = dict(re.findall(r'data-count="(\w+)">(\d+)<', page))
    assert counts == {"total": "5", "online": "3", "offline": "1", "revoked": "1"}
    text = _text(page)
    # Online devices only: v1 = dev-a1 + dev-a2, v2 = dev-b1 (dev-b2 is offline, its last report is not load now).
    assert "detect tiny-cnn 1 2 15.0 20.0 140 8 2 0" in text, text
    assert "detect tiny-cnn 2 1 2.5 4.0 25 0 1 0" in text, text
    assert all(d in page for d in FLEET)

    status, page, _ = await browser.get("/ui/?label=site%3Da")
    counts = dict(re.findall(r'data-count="(\w+)">(\d+)<', page))
    assert counts == {"total": "2", "online": "2", "offline": "0", "revoked": "0"}
    assert "dev-a1" in page and "dev-b1" not in page and "tiny-cnn 2" not in _text(page)
    status, page, _ = await browser.get("/ui/?labels=site%3Db%2C+fleet%3Ddemo&state=offline")
    assert ">dev-b2<" in page and ">dev-b1<" not in page and ">dev-x<" not in page
    status, page, _ = await browser.get("/ui/?labels=nonsense")
    assert status == 400 and "key=value" in page


async def test_paging_at_more_devices_than_a_page(browser: Browser, hub: Hub) -> None:
    await add_devices(hub, {f"dev-{i:03d}": {"labels": {"fleet": "big"}} for i in range(250)})
    await logged_in(browser)
    first = (await browser.get("/ui/"))[1]
    third = (await browser.get("/ui/?page=3"))[1]
    assert ">dev-000<" in first and ">dev-099<" in first and ">dev-100<" not in first
    assert ">dev-200<" in third and ">dev-249<" in third and ">dev-199<" not in third
    assert "page 1 of 3" in first and "page=2" in first
    assert "page 3 of 3" in (await browser.get("/ui/?page=99"))[1]  # past the end: the last page


async def test_the_device_page_shows_pipelines_reports_and_reported_state(browser: Browser, hub: Hub) -> None:
    reported = {"revision": 4, "converged": False, "updated_at": 1.0,
                "models": [{"name": "tiny-cnn", "version": "2", "state": "downloading", "progress": 0.5}]}  # fmt: skip
    await add_devices(hub, {"dev-a1": {**FLEET["dev-a1"], "reported": reported}})
    await logged_in(browser)
    status, page, _ = await browser.get("/ui/devices/dev-a1")
    assert status == 200
    text = _text(page)
    assert "detect tiny-cnn 1 10.0 2.7 8.0" in text, text  # pipeline, model, version, req/s, p50, p99
    assert "downloading" in text and "50" in text and "Revoke device" in text
    status, page, _ = await browser.get("/ui/devices/nobody")
    assert status == 404 and "no device" in page


async def _rollout(hub: Hub, tmp_path: Path) -> str:
    hub.registry.trust_key(ZOO_PUBLIC_KEY_FILE.read_bytes())
    upload = hub.registry.new_upload() / "upload.tar"
    zoo_tar(tmp_path, "tiny-cnn", "2").rename(upload)
    await hub.registry.push(upload)
    rollout = await hub.rollouts.create(
        RolloutSpec(model="tiny-cnn", version="2", selector={"fleet": "demo"}, bake_s=3600)
    )
    return rollout.id


def _dashboard_routes() -> list[tuple[str, str]]:
    """(method, concrete path) of every dashboard route, from its router (new routes join automatically)."""
    found = []
    for route in build_dashboard().router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = str(info.get("formatter") or info.get("path"))
        path = re.sub(r"\{(?!action)\w+\}", "x", "/ui" + template.replace("{device_id}", "dev-a1"))
        verbs = ("pause", "resume", "abort") if "{action}" in path else ("",)
        found += [(route.method, path.replace("{action}", verb)) for verb in verbs]
    return found


async def test_every_route_refuses_without_a_session_and_every_post_a_forged_csrf(
    browser: Browser, hub: Hub, tmp_path: Path
) -> None:
    await add_devices(hub, FLEET)
    rollout_id = await _rollout(hub, tmp_path)
    routes = [(m, p.replace("/x/", f"/{rollout_id}/") if "rollouts" in p else p) for m, p in _dashboard_routes()]
    open_paths = {"/ui/login", "/ui/static/dashboard.js", "/ui/static/dashboard.css"}
    guarded = [(m, p) for m, p in routes if p not in open_paths]
    assert len([r for r in guarded if r[0] == "POST"]) >= 7 and len(guarded) >= 12, guarded
    for method, path in guarded:
        async with browser.session.request(method, browser.url + path, ssl=browser.ssl, allow_redirects=False,
                                           data={"csrf": "x"}) as resp:  # fmt: skip
            if method in ("GET", "HEAD"):
                assert resp.status == 303 and resp.headers["Location"].startswith("/ui/login?"), (method, path)
            else:
                assert resp.status == 401, (method, path, resp.status)
    # An event stream without a session: 401, not a redirect an EventSource would follow into HTML.
    status, _, _ = await browser.get("/ui/", headers={"Accept": "text/event-stream"})
    assert status == 401

    await logged_in(browser)
    csrf = await browser.csrf()
    posts = [p for m, p in guarded if m == "POST"]
    forged = [{}, {"csrf": ""}, {"csrf": "forged-" + csrf[7:]}, {"csrf": csrf + "x"}, {"csrf": csrf.upper()}]
    for path in posts:
        for data in forged:
            status, _, _ = await browser.post(path, data)
            assert status == 403, (path, data, status)
        # The right token from another site's page is refused too (the browser says where it comes from).
        status, _, _ = await browser.post(path, {"csrf": csrf}, headers={"Origin": "https://evil.example"})
        assert status == 403, path
        status, _, _ = await browser.post(path, {"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"})
        assert status == 403, path
    # Nothing happened: the session lives, the rollout runs, the device and claims are as they were.
    assert (await browser.get("/ui/"))[0] == 200
    assert (await hub.rollouts.get(rollout_id)).state in ("pending", "running")
    async with hub.store.begin() as conn:
        assert (await devices.require(conn, "dev-a1")).status == "active"
    assert await hub.claims.list() == []


async def test_rollout_controls_and_claims_with_the_sessions_csrf_token(
    browser: Browser, hub: Hub, tmp_path: Path
) -> None:
    await add_devices(hub, FLEET)
    rollout_id = await _rollout(hub, tmp_path)
    await logged_in(browser)
    csrf = await browser.csrf(f"/ui/rollouts/{rollout_id}")
    for verb, state in (("pause", "paused"), ("resume", None), ("abort", "aborted")):
        status, _, resp = await browser.post(f"/ui/rollouts/{rollout_id}/{verb}", {"csrf": csrf})
        assert status == 303 and resp.headers["Location"] == f"/ui/rollouts/{rollout_id}"
        current = (await hub.rollouts.get(rollout_id)).state
        assert current == state if state else current in ("pending", "running")
    status, page, _ = await browser.get(f"/ui/rollouts/{rollout_id}")
    assert "aborted by the operator" in page and f"rollout {rollout_id}: abort done" in page
    assert (await browser.post(f"/ui/rollouts/{rollout_id}/pause", {"csrf": csrf}))[0] == 303
    assert "only a pending or running rollout can be paused" in (await browser.get(f"/ui/rollouts/{rollout_id}"))[1]

    status, _, _ = await browser.post("/ui/claims", {"csrf": csrf, "labels": "site=c", "uses": "2", "hours": "1"})
    assert status == 303
    page = (await browser.get("/ui/claims"))[1]
    token = re.search(r"--claim (\S+)", page)
    assert token is not None  # shown once ...
    claim = (await hub.claims.list())[0]
    assert claim.labels == {"site": "c"} and claim.uses_total == 2
    assert token.group(1) not in (await browser.get("/ui/claims"))[1]  # ... and only once
    assert (await browser.post(f"/ui/claims/{claim.id}/revoke", {"csrf": csrf}))[0] == 303
    assert (await hub.claims.list())[0].revoked_at is not None
    assert (await browser.post("/ui/devices/dev-a1/revoke", {"csrf": csrf}))[0] == 303
    async with hub.store.begin() as conn:
        assert (await devices.require(conn, "dev-a1")).status == "revoked"


async def test_failed_logins_are_limited_per_source(browser: Browser) -> None:
    statuses = []
    for _ in range(12):
        page = (await browser.get("/ui/login"))[1]
        nonce = re.search(r'name="nonce" value="([^"]+)"', page)
        assert nonce is not None
        statuses.append((await browser.post("/ui/login", {"nonce": nonce.group(1), "token": "efo_guess"}))[0])
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    # A login POST without the login form's nonce (a cross-site login) is refused before the token is looked at.
    status, _, _ = await browser.post("/ui/login", {"token": operator_token(browser.hub)})
    assert status == 403


async def _events(resp: aiohttp.ClientResponse, want: int, timeout_s: float = 10) -> list[tuple[str, Any]]:
    """The next `want` named events of an event stream."""
    found: list[tuple[str, Any]] = []
    name = None
    async with asyncio.timeout(timeout_s):
        while len(found) < want:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                found.append((name, json.loads(line[6:])))
                name = None
    return found


async def test_the_stream_sends_changed_regions_and_ends_at_logout(browser: Browser, hub: Hub) -> None:
    await add_devices(hub, FLEET)
    await logged_in(browser)
    csrf = await browser.csrf()
    async with browser.session.get(
        browser.url + "/ui/", ssl=browser.ssl, headers={"Accept": "text/event-stream"}
    ) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        [(name, first)] = await _events(resp, 1)
        assert name == "regions" and set(first) == {"fleet-counts", "fleet-pipelines", "fleet-devices"}
        assert 'data-count="online">3<' in first["fleet-counts"]
        async with hub.store.begin() as conn:
            await devices.apply_updates(conn, {"dev-a1": {"online": False}})
        [(name, changed)] = await _events(resp, 1)
        assert name == "regions" and 'data-count="online">2<' in changed["fleet-counts"]
        assert "fleet-devices" in changed  # the row's state changed; unchanged regions are not sent again
        assert (await browser.post("/ui/logout", {"csrf": csrf}))[0] == 303
        [(name, _)] = await _events(resp, 1)
        assert name == "expired"
