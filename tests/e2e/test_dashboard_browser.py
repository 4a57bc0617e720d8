"""Issue 17: the dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright) against
real processes: mosquitto (mTLS + ACL), `cloud-hub serve`, provisioned `edge-agent serve` agents.

Log in, see the fleet come online live, filter by label, open a device, follow a rollout to completion
without a reload, pause / resume / abort another; the session cookie is Secure/HttpOnly/SameSite=Strict and
nothing else is stored; requests without the session or with a forged CSRF token are refused; no console
errors. Screenshots go to $EDGEFLEET_ARTIFACTS (default tmp/artifacts)/dashboard/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from rollout_support import Rig

from cloud_hub.pki.identity import HubPaths
from deploy.local import stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARTIFACTS = Path(os.environ.get("EDGEFLEET_ARTIFACTS", stack.REPO / "tmp" / "artifacts")) / "dashboard"
if CHROMIUM is None:
    pytest.skip("chromium is not installed (make system-deps, or apt-get install chromium)", allow_module_level=True)
try:
    from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    pytest.skip("playwright is not installed (pip install -e '.[dev]')", allow_module_level=True)

WAIT_MS = 60_000


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    try:
        await r.start()
        await stack.push_models(r.sup, r.hub_dir)  # tiny-cnn 1 and 2, signed by the zoo key
        yield r
    finally:
        r.stop()


@pytest_asyncio.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        # --no-sandbox: the tests run as root in CI, where Chromium's sandbox refuses to start.
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


class Console:
    """Every console error and uncaught page error of a context's pages."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Page) -> Page:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        return page

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} at {message.location}")


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def wait_text(page: Page, selector: str, text: str, timeout_ms: int = WAIT_MS) -> None:
    """Until the element's text contains `text` (the live stream changes it in place)."""
    await page.wait_for_function(
        "([s, t]) => { const el = document.querySelector(s); return !!el && el.textContent.includes(t); }",
        arg=[selector, text],
        timeout=timeout_ms,
    )


async def wait_state(page: Page, state: str, timeout_ms: int = WAIT_MS) -> None:
    await page.wait_for_selector(f'#rollout-summary [data-state="{state}"]', timeout=timeout_ms)


async def log_in(context: BrowserContext, console: Console, hub_url: str, token: str) -> Page:
    page = console.watch(await context.new_page())
    await page.goto(f"{hub_url}/ui/")
    assert "/ui/login" in page.url  # no session: the login form
    await page.fill('input[name="token"]', token)
    await page.click('button[type="submit"]')
    await page.wait_for_url(f"{hub_url}/ui/")
    return page


async def test_operator_logs_in_watches_the_fleet_follows_a_rollout_and_aborts_one(rig: Rig, chromium: Browser) -> None:
    agents = [await rig.add_agent(f"dev-{i}", {"site": "a" if i < 2 else "b"}) for i in range(3)]
    for agent in agents:  # some load, so the pipeline rows have figures
        for _ in range(5):
            await rig.serving(agent)
    token = HubPaths(rig.hub_dir).operator_token.read_text().strip()
    console = Console()
    context = await chromium.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 900})
    page = await log_in(context, console, rig.hub_url, token)

    # The session is the only thing the browser keeps: a Secure, HttpOnly, SameSite=Strict cookie.
    cookies = {c["name"]: c for c in await context.cookies()}
    session = cookies["edgefleet_session"]
    assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"
    assert token not in session["value"] and token not in page.url
    stored = await page.evaluate("[document.cookie, localStorage.length, sessionStorage.length]")
    assert stored == ["", 0, 0]
    assert token not in await page.content()

    # The fleet, live: every agent online, the pipeline's load per version.
    await page.wait_for_function("document.querySelector('[data-count=online]').textContent === '3'", timeout=WAIT_MS)
    await wait_text(page, "#fleet-pipelines", "detect")
    for agent in agents:
        assert await page.is_visible(f'#fleet-devices a[href="/ui/devices/{agent.device_id}"]')
    await shot(page, "01-fleet")
    await page.fill('input[name="labels"]', "site=b")
    await page.click("form.filters button")
    await page.wait_for_url("**/ui/?labels=site%3Db*")
    assert await page.locator("#fleet-devices tbody tr").count() == 1
    assert await page.is_visible('#fleet-devices a[href="/ui/devices/dev-2"]')
    await page.click('a.chip:has-text("site=b")')  # a label chip filters by that label too
    assert await page.locator("#fleet-devices tbody tr").count() == 1

    # One device: its pipelines with p99 and queue depth from the last report, its last reports.
    await page.click('#fleet-devices a[href="/ui/devices/dev-2"]')
    await page.wait_for_url("**/ui/devices/dev-2")
    await wait_text(page, "#device-pipelines", "detect")
    await wait_text(page, "#device-reports", "detect")
    await shot(page, "02-device")

    # A rollout followed to completion on its page, without a reload.
    first = await rig.rollout("2", "--canary", "1", "--waves", "100%", "--bake", "1s")
    await page.goto(f"{rig.hub_url}/ui/rollouts/{first}")
    await page.evaluate("window.__stillTheSamePage = true")
    await wait_state(page, "completed", 90_000)
    assert await page.evaluate("window.__stillTheSamePage === true")
    assert int(await page.get_attribute("body", "data-updates") or 0) >= 1
    assert await page.locator("#rollout-devices .badge-active").count() == 3
    await shot(page, "03-rollout-completed")
    await page.click('#rollout-devices a[href="/ui/devices/dev-0"]')
    await wait_text(page, "#device-state", "active")  # the device's reported state: tiny-cnn 2 active
    await wait_text(page, "#device-state", f"rollout {first}")
    await shot(page, "04-device-after-rollout")

    # Another one, paused, resumed and aborted from the page (the abort asks first).
    second = await rig.rollout("1", "--canary", "1", "--waves", "100%", "--bake", "300s")
    await page.goto(f"{rig.hub_url}/ui/rollouts/{second}")
    await page.wait_for_selector('#rollout-summary [data-state="running"], #rollout-summary [data-state="pending"]')
    await page.click('[data-action="pause"]')
    await wait_state(page, "paused")
    await page.click('[data-action="resume"]')
    await page.wait_for_selector('#rollout-summary [data-action="pause"]', timeout=WAIT_MS)
    page.once("dialog", lambda dialog: dialog.accept())
    await page.click('[data-action="abort"]')
    await wait_state(page, "aborted")
    await wait_text(page, "#rollout-summary .reason", "aborted by the operator")
    await shot(page, "05-rollout-aborted")
    assert (await rig.rollout_detail(second))["state"] == "aborted"
    await page.goto(f"{rig.hub_url}/ui/rollouts")
    await wait_text(page, "#rollouts-list", "completed")
    await page.goto(f"{rig.hub_url}/ui/claims")
    await wait_text(page, "#claims-list", "site=a")  # the claims the agents were provisioned with
    await shot(page, "06-claims")

    # Forged CSRF with the session: refused, and nothing changed. No session at all: refused.
    forged = await page.request.post(f"{rig.hub_url}/ui/devices/dev-0/revoke", form={"csrf": "forged"})
    assert forged.status == 403
    assert "edgefleet_session" in {c["name"] for c in await context.cookies()}
    device = (await rig.api("GET", "/api/v1/devices/dev-0"))["device"]
    assert device["status"] == "active"
    stranger = await chromium.new_context(ignore_https_errors=True)
    anonymous = await stranger.request.post(f"{rig.hub_url}/ui/devices/dev-0/revoke", form={"csrf": "x"})
    assert anonymous.status == 401
    other = console.watch(await stranger.new_page())
    await other.goto(f"{rig.hub_url}/ui/rollouts/{first}")
    assert "/ui/login" in other.url
    await stranger.close()

    # Logging out ends the session for the live stream too.
    await page.click('[data-action="logout"]')
    await page.wait_for_url("**/ui/login")
    await context.close()
    assert console.errors == [], console.errors
