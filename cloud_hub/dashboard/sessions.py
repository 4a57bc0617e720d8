"""Operator sessions of the dashboard: a random id in a Secure, HttpOnly, SameSite=Strict cookie, a CSRF
token per session, both kept in this replica's memory only (never the operator token itself)."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

SESSION_COOKIE = "edgefleet_session"
LOGIN_COOKIE = "edgefleet_login"  # login CSRF: a nonce the login form must echo (double submit)
COOKIE_PATH = "/ui/"
SESSION_TTL_S = 12 * 3600.0
LOGIN_NONCE_TTL_S = 600
MAX_SESSIONS = 1000


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    id: str
    csrf: str
    expires_at: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (level, text) shown once on the next page

    def say(self, level: str, text: str) -> None:
        """Queue a message for the next page this session loads."""
        self.flash.append((level, text))

    def take_flash(self) -> list[tuple[str, str]]:
        """The queued messages, emptying the queue."""
        taken, self.flash = self.flash, []
        return taken


class SessionStore:
    """Sessions by id, bounded (the oldest go first) and expiring `ttl_s` after login."""

    def __init__(
        self, *, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS, clock: Callable[[], float] = time.time
    ) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self) -> Session:
        """A new session (a fresh id at every login: no fixation)."""
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            expires_at=self.clock() + self.ttl_s,
        )
        self._sessions[session.id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown or expired; an expired one is dropped)."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self.clock():
            del self._sessions[session_id]
            return None
        return session

    def drop(self, session_id: str) -> None:
        """Log a session out."""
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted token with the expected one."""
    return bool(given) and hmac.compare_digest(str(given).encode(), expected.encode())


def set_cookie(response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
    """A cookie that only HTTPS requests from the hub's own pages carry, and scripts cannot read."""
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, secure=True, httponly=True, samesite="Strict")


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    """Tell the browser to forget a cookie."""
    response.del_cookie(name, path=COOKIE_PATH, secure=True, httponly=True, samesite="Strict")
