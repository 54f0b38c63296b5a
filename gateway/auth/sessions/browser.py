"""RFC 9110 §12.5.1 (Accept and its q-values) and Fetch Metadata (``Sec-Fetch-Mode``): telling a
person's browser navigating to a page from a program calling an API.

Only the first may be sent to a login page. A script, a mobile app or a curl that gets a 302
to an HTML form instead of a 401 breaks in confusing ways (oauth2-proxy #2918), and a bad
bearer token answered with a login redirect hides the real error. So a redirect needs every
sign of a navigation, and anything else gets the 401 with its challenge.
"""

from __future__ import annotations

import re
from typing import Final

# Fetch Metadata §2.1 Sec-Fetch-Site values of a request this origin started (or the user
# did, typing the URL: "none"); "" when the browser sends none (it predates Fetch Metadata).
_SAME_ORIGIN: Final = frozenset({"same-origin", "none", ""})
# RFC 9110 §9.2.1: the methods whose semantics are read-only (TRACE is never relayed).
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_ACCEPT_BYTES: Final = 4096
MAX_MEDIA_RANGES: Final = 64
# RFC 9110 §12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE: Final = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def wants_login_redirect(
    method: str,
    *,
    accept: str | None,
    authorization: bool,
    x_requested_with: bool,
    sec_fetch_mode: str | None,
) -> bool:
    """True only for an unauthenticated ``GET`` whose ``Accept`` prefers HTML to JSON, that
    carries no ``Authorization`` (a bearer token present, valid or not, is an API call), no
    ``X-Requested-With`` (set by XHR libraries), and, when the browser sends Fetch Metadata,
    ``Sec-Fetch-Mode: navigate`` (a ``fetch()`` from a page is not a navigation)."""
    if method != "GET" or authorization or x_requested_with:
        return False
    if sec_fetch_mode is not None and sec_fetch_mode.strip().lower() != "navigate":
        return False
    if accept is None:
        return False  # RFC 9110 §12.5.1: no Accept means */*, which prefers nothing
    preferences = parse_accept(accept)
    if preferences is None:
        return False
    html = quality(preferences, "text", "html")
    json = quality(preferences, "application", "json")
    return html > 0 and html > json


def parse_accept(value: str) -> list[tuple[str, str, float]] | None:
    """``(type, subtype, q)`` for each media range; None for a header that is too large or
    not the RFC 9110 §12.5.1 grammar (an unreadable Accept is no reason to redirect)."""
    if len(value) > MAX_ACCEPT_BYTES:
        return None
    ranges = [item for item in value.split(",") if item.strip(" \t")]
    if len(ranges) > MAX_MEDIA_RANGES:
        return None
    parsed: list[tuple[str, str, float]] = []
    for item in ranges:
        media, *params = item.split(";")
        kind, slash, subtype = media.strip(" \t").lower().partition("/")
        if not slash or _TOKEN.fullmatch(kind) is None or _TOKEN.fullmatch(subtype) is None:
            return None
        if kind == "*" and subtype != "*":
            return None
        q = 1.0
        for param in params:
            name, equals, raw = param.strip(" \t").partition("=")
            if not equals:
                return None
            if name.strip(" \t").lower() == "q":
                text = raw.strip(" \t")
                if _QVALUE.fullmatch(text) is None:
                    return None
                q = float(text)
        parsed.append((kind, subtype, q))
    return parsed


def quality(preferences: list[tuple[str, str, float]], kind: str, subtype: str) -> float:
    """RFC 9110 §12.5.1: the q of the most specific range that matches (``text/html`` over
    ``text/*`` over ``*/*``); 0 when none does."""
    best_rank = -1
    best_q = 0.0
    for range_kind, range_subtype, q in preferences:
        if range_kind == kind and range_subtype == subtype:
            rank = 2
        elif range_kind == kind and range_subtype == "*":
            rank = 1
        elif range_kind == "*" and range_subtype == "*":
            rank = 0
        else:
            continue
        if rank > best_rank or (rank == best_rank and q > best_q):
            best_rank, best_q = rank, q
    return best_q


def from_another_origin(sec_fetch_site: str | None, origin: str | None, ours: str) -> bool:
    """Whether a browser says this request was started by a page of another origin: its
    ``Sec-Fetch-Site`` is anything but ``same-origin`` or ``none`` (``same-site`` too: a
    sibling subdomain is another origin, and may host anyone's pages), or its ``Origin`` is
    not ``ours`` (``null`` included). A request that carries neither (not a browser, or one
    before Fetch Metadata on a form ``GET``) says nothing, and is not refused for it."""
    site = (sec_fetch_site or "").strip().lower()
    return site not in _SAME_ORIGIN or (origin is not None and origin != ours)
