"""Login, logout and the dashboard's guard: every page needs a session, every state-changing request its
CSRF token (and, when the browser says where it comes from, the hub's own origin).

The login takes an operator API token once (checked like the API's Bearer tokens) and answers with the
session cookie; the token is not kept, not put in a URL and never reaches the page's scripts.
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from cloud_hub.api.errors import Handler, status_of
from cloud_hub.api.keys import HUB_KEY
from cloud_hub.dashboard.html import PREFIX, Page, e, layout
from cloud_hub.dashboard.keys import LIMITER_KEY, SESSION_KEY, SESSIONS_KEY
from cloud_hub.dashboard.sessions import (
    LOGIN_COOKIE,
    LOGIN_NONCE_TTL_S,
    SESSION_COOKIE,
    clear_cookie,
    same_secret,
    set_cookie,
)
from cloud_hub.errors import HubError, TooManyRequests

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD"})
# Paths that answer without a session: the login form itself and the static files it loads.
OPEN_PATHS = frozenset({f"{PREFIX}/login"})
STATIC = f"{PREFIX}/static/"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
routes = web.RouteTableDef()


def html_response(text: str, status: int = 200) -> web.Response:
    """An HTML page."""
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def redirect(location: str) -> web.Response:
    """303 See Other (a response, not an exception, so its cookies go out whatever the middlewares do)."""
    return web.Response(status=303, headers={"Location": location})


def error_page(status: int, message: str, *, logged_in: bool) -> web.Response:
    """A small HTML error page (the API's JSON errors stay for /api/)."""
    back = f'<p><a href="{PREFIX}/">back to the fleet</a></p>' if logged_in else ""
    page = Page(title=f"{status}", nav="", head=f'<p class="flash flash-error">{e(message)}</p>{back}')
    return html_response(layout(page, None, live=False), status)


def _wants_stream(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def _cross_site(request: web.Request) -> bool:
    """True when the browser says the request comes from another site or origin."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc != request.host


async def _csrf_ok(request: web.Request, expected: str) -> bool:
    """The form's `csrf` field is the session's token, and the browser does not say it came from elsewhere."""
    token = (await request.post()).get("csrf")
    return not _cross_site(request) and isinstance(token, str) and same_secret(token, expected)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session on every page but the login; CSRF token and same origin on every state-changing request."""
    path = request.path
    if path.startswith(STATIC) or path in OPEN_PATHS:
        return await handler(request)
    session = request.app[SESSIONS_KEY].get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        if request.method in SAFE_METHODS and not _wants_stream(request):
            return redirect(f"{PREFIX}/login?" + urlencode({"next": request.path_qs}))
        return error_page(401, "not logged in", logged_in=False)
    if request.method not in SAFE_METHODS and not await _csrf_ok(request, session.csrf):
        log.warning("dashboard: %s %s refused: missing or forged CSRF token", request.method, path)
        return error_page(403, "forbidden: this form was not issued by this session", logged_in=True)
    request[SESSION_KEY] = session
    return await _as_html_errors(request, handler)


async def _as_html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Hub errors of a logged-in page as HTML error pages (the API's middleware would answer JSON)."""
    try:
        return await handler(request)
    except HubError as exc:
        status = status_of(exc)
        if status >= 500:
            log.exception("dashboard: %s %s failed", request.method, request.path)
            return error_page(status, "internal error", logged_in=True)
        return error_page(status, str(exc), logged_in=True)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: a strict CSP, no framing, no sniffing, nothing cached."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if not request.path.startswith(STATIC):
        response.headers.setdefault("Cache-Control", "no-store")


def safe_next(target: object) -> str:
    """Where to go after the login: a dashboard path on this host, else the fleet."""
    text = target if isinstance(target, str) else ""
    if not text.startswith(f"{PREFIX}/") or text.startswith("//") or "\\" in text or text.startswith(f"{PREFIX}/login"):
        return f"{PREFIX}/"
    return text


def _login_page(nonce: str, target: str, error: str | None = None) -> str:
    message = f'<p class="flash flash-error">{e(error)}</p>' if error else ""
    form = (
        f'{message}<form method="post" action="{PREFIX}/login" class="login">'
        f'<input type="hidden" name="nonce" value="{e(nonce)}"><input type="hidden" name="next" value="{e(target)}">'
        '<label>Operator API token <input type="password" name="token" autocomplete="off" required autofocus></label>'
        '<button type="submit">Log in</button></form>'
        "<p class=hint>The token printed by the hub's first start (also in its data dir, operator-token). "
        "It is checked once; the browser keeps only a session cookie.</p>"
    )
    return layout(Page(title="Log in", nav="", head=form), None, live=False)


def _login_response(request: web.Request, target: str, error: str | None = None, status: int = 200) -> web.Response:
    nonce = secrets.token_urlsafe(24)
    response = html_response(_login_page(nonce, target, error), status)
    set_cookie(response, LOGIN_COOKIE, nonce, LOGIN_NONCE_TTL_S)
    return response


@routes.get("/login")
async def login_form(request: web.Request) -> web.StreamResponse:
    """The login form (a fresh login nonce in a cookie and in the form)."""
    if request.app[SESSIONS_KEY].get(request.cookies.get(SESSION_COOKIE)) is not None:
        return redirect(safe_next(request.query.get("next")))
    return _login_response(request, safe_next(request.query.get("next")))


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    """Check the operator token once; on success a new session and its cookie."""
    form = await request.post()
    target = safe_next(form.get("next"))
    nonce = form.get("nonce")
    if (
        _cross_site(request)
        or not isinstance(nonce, str)
        or not same_secret(nonce, request.cookies.get(LOGIN_COOKIE, ""))
    ):
        return error_page(403, "forbidden: log in from the hub's own login form", logged_in=False)
    limiter, source = request.app[LIMITER_KEY], request.remote or "?"
    try:
        limiter.check(source)
    except TooManyRequests as exc:
        response = _login_response(request, target, "too many failed logins: wait and retry", 429)
        response.headers["Retry-After"] = str(int(exc.retry_after_s) or 1)
        return response
    token = form.get("token")
    if not isinstance(token, str) or not token.strip() or not request.config_dict[HUB_KEY].check_token(token.strip()):
        limiter.failed(source)
        log.warning("dashboard: failed login from %s", source)
        return _login_response(request, target, "unknown token", 401)
    sessions = request.app[SESSIONS_KEY]
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        sessions.drop(old)
    session = sessions.create()
    log.info("dashboard: operator logged in from %s", source)
    response = redirect(target)
    set_cookie(response, SESSION_COOKIE, session.id, int(sessions.ttl_s))
    clear_cookie(response, LOGIN_COOKIE)
    return response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    """End the session (server side too) and forget the cookie."""
    request.app[SESSIONS_KEY].drop(request[SESSION_KEY].id)
    response = redirect(f"{PREFIX}/login")
    clear_cookie(response, SESSION_COOKIE)
    return response
