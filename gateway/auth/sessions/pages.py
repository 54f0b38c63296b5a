"""RFC 9457 problems for the browser-login endpoints, as a person at a browser reads them: the
same problem, as a small HTML page when the request prefers HTML (RFC 9110 §12.5.1), else as
``application/problem+json``. Never a redirect: a failed sign-in that sent the browser back
to the authorization server would loop.

Every answer of these endpoints is ``no-store`` (it sets or clears session cookies), sends no
``Referer`` onward (the callback URL carries a code), and forbids any active content.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gateway.auth.sessions.browser import parse_accept, quality
from gateway.problems import SERVER_NAME, GatewayError, render_problem

Header = tuple[str, str]
PAGE_HEADERS: Final[tuple[Header, ...]] = (
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
)
_PAGE: Final = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1><p>{detail}</p>{reference}</body></html>
"""


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete answer the gateway gives itself (no upstream): any listener writes it as
    is, repeating header names as they come (several ``Set-Cookie``)."""

    status: int
    headers: tuple[Header, ...]
    body: bytes
    reason: str = "ok"  # for the access log and metrics labels


def redirect(location: str, set_cookies: Sequence[str], reason: str, *, status: int = 302) -> Reply:
    headers = [("Location", location), ("Server", SERVER_NAME), *PAGE_HEADERS]
    headers += [("Set-Cookie", cookie) for cookie in set_cookies]
    return Reply(status, tuple(headers), b"", reason)


def prefers_html(accept: str | None) -> bool:
    preferences = parse_accept(accept) if accept is not None else None
    if not preferences:
        return False
    return quality(preferences, "text", "html") > quality(preferences, "application", "json")


def problem_page(
    error: GatewayError,
    accept: str | None,
    *,
    set_cookies: Sequence[str] = (),
    request_id: str | None = None,
) -> Reply:
    """``error`` rendered by the one renderer, its body turned into a page for browsers."""
    rendered = render_problem(error, request_id=request_id)
    taken = {name for name, _ in PAGE_HEADERS}
    headers = [(name, value) for name, value in rendered.headers if name not in taken]
    body = rendered.body
    if prefers_html(accept):
        reference = (
            f"<p>Reference: <code>{html.escape(request_id)}</code></p>" if request_id else ""
        )
        body = _PAGE.format(
            title=html.escape(error.title), detail=html.escape(error.detail), reference=reference
        ).encode()
        headers = [
            ("Content-Type", "text/html; charset=utf-8") if name == "Content-Type" else (name, v)
            for name, v in headers
        ]
    headers += PAGE_HEADERS
    headers += [("Set-Cookie", cookie) for cookie in set_cookies]
    return Reply(error.status, tuple(headers), body, error.reason)


def empty(status: int, reason: str) -> Reply:
    """A body-less answer (RFC 9110 §15.3.1 200 to a back-channel logout)."""
    return Reply(status, (("Server", SERVER_NAME), *PAGE_HEADERS), b"", reason)
