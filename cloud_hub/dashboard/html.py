"""HTML building blocks of the dashboard: escaping, the page layout, tables, forms with their CSRF field,
pagers. Every value that comes from the store or a device goes through `e()`; helpers return HTML text."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from cloud_hub.dashboard.sessions import Session

PREFIX = "/ui"
NAV = (
    ("fleet", f"{PREFIX}/", "Fleet"),
    ("rollouts", f"{PREFIX}/rollouts", "Rollouts"),
    ("claims", f"{PREFIX}/claims", "Claims"),
)
DASH = "\u2014"


@dataclass
class Page:
    """A rendered page: `head` is static (forms the operator types into), `regions` are replaced live."""

    title: str
    nav: str
    head: str = ""
    regions: dict[str, str] = field(default_factory=dict)


def e(value: object) -> str:
    """Escaped text of a value; None shows as a dash."""
    return DASH if value is None else html.escape(str(value), quote=True)


def ts(at: float | None) -> str:
    """A Unix time as UTC `YYYY-MM-DD HH:MM:SS` (absolute, so a live region only changes with the data)."""
    if at is None:
        return DASH
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def num(value: float | None, digits: int = 1) -> str:
    """A figure with `digits` decimals; None shows as a dash."""
    return DASH if value is None else f"{value:.{digits}f}"


def link(href: str, text: str) -> str:
    """An anchor; `href` is escaped as an attribute, `text` as text."""
    return f'<a href="{e(href)}">{e(text)}</a>'


def badge(text: str, kind: str | None = None) -> str:
    """A small coloured label (kind: a CSS class suffix, defaults to the text)."""
    return f'<span class="badge badge-{e(kind or text)}">{e(text)}</span>'


def labels(pairs: Mapping[str, str]) -> str:
    """Labels as chips, each a link to the fleet filtered by it."""
    chips = [
        f'<a class="chip" href="{e(PREFIX + "/?" + urlencode({"label": f"{k}={v}"}))}">{e(k)}={e(v)}</a>'
        for k, v in sorted(pairs.items())
    ]
    return " ".join(chips) or DASH


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, css: str = "", empty: str = "none") -> str:
    """A table of already-built cell HTML."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td class="empty" colspan="{len(headers)}">{e(empty)}</td></tr>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f'<table class="{e(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def dl(items: Iterable[tuple[str, str]]) -> str:
    """A definition list of (term, already-built HTML)."""
    return "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def csrf_field(session: Session) -> str:
    """The hidden input every state-changing form carries."""
    return f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'


def action(
    session: Session,
    url: str,
    label: str,
    *,
    confirm: str | None = None,
    fields: str = "",
    css: str = "",
    name: str = "",
) -> str:
    """A one-button POST form (with the CSRF field); `confirm` asks the operator first (dashboard.js)."""
    ask = f' data-confirm="{e(confirm)}"' if confirm else ""
    test_id = f' data-action="{e(name)}"' if name else ""
    return (
        f'<form method="post" action="{e(url)}" class="inline"{ask}>{csrf_field(session)}{fields}'
        f'<button type="submit" class="{e(css)}"{test_id}>{e(label)}</button></form>'
    )


def pager(base: str, query: Mapping[str, str | Sequence[str]], page: int, pages: int) -> str:
    """Previous / next links that keep the other query parameters."""
    if pages <= 1:
        return ""

    def href(n: int) -> str:
        return base + "?" + urlencode({**query, "page": str(n)}, doseq=True)

    prev = link(href(page - 1), "\u2190 previous") if page > 1 else ""
    nxt = link(href(page + 1), "next \u2192") if page < pages else ""
    return f'<p class="pager">{prev} <span>page {page} of {pages}</span> {nxt}</p>'


def region(region_id: str, content: str) -> str:
    """A live region: the stream replaces its content by id."""
    return f'<div id="{e(region_id)}" class="region">{content}</div>'


def layout(page: Page, session: Session | None, *, live: bool) -> str:
    """The whole document around a page (no inline script or style: the CSP forbids both)."""
    nav = "".join(f'<a href="{href}"{" class=active" if key == page.nav else ""}>{text}</a>' for key, href, text in NAV)
    user = ""
    if session is not None:
        user = action(session, f"{PREFIX}/logout", "Log out", css="link", name="logout")
        flashes = "".join(f'<p class="flash flash-{e(level)}">{e(text)}</p>' for level, text in session.take_flash())
    else:
        nav, flashes = "", ""
    body = page.head + "".join(region(k, v) for k, v in page.regions.items())
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(page.title)} \u00b7 edgefleet hub</title>"
        '<link rel="icon" href="data:,">'
        f'<link rel="stylesheet" href="{PREFIX}/static/dashboard.css">'
        f'<script src="{PREFIX}/static/dashboard.js" defer></script></head>'
        f'<body data-live="{"1" if live else "0"}"><header><strong>edgefleet hub</strong><nav>{nav}</nav>'
        f'<span id="live-status" class="live-status"></span>{user}</header>'
        f"<main><h1>{e(page.title)}</h1>{flashes}{body}</main></body></html>"
    )
