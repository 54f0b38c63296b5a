"""Responses a shared cache must not keep: ``Cache-Control: private`` on the way out.

Two kinds of response carry something of one user that a CDN or a corporate proxy could
otherwise store and hand to the next user:

- the answer to a request whose token came in the query (RFC 6750 §2.3: "Server success
  (2XX status) responses to these requests SHOULD contain a Cache-Control header with the
  "private" option"); the URL, the token in it, is the cache key;
- a response to which the gateway adds a ``Set-Cookie`` of its own (a browser session
  touched or refreshed): RFC 9111 §7.3 lets a shared cache store a response with a
  ``Set-Cookie``, so a cacheable static asset would carry one user's session to others.

The upstream's own directives stay (a browser may still cache privately for ``max-age``),
except those meant for shared caches only: ``public`` and ``s-maxage`` (RFC 9111
§5.2.2.9-10) would contradict ``private``. ``no-store`` already says more, so a response
carrying it keeps its fields unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.proxy.forward import ResponseFilter

Header = tuple[str, str]

_REPLACED = frozenset({"public", "s-maxage", "private"})
"""Directives the one unqualified ``private`` replaces: for shared caches only, or itself
(qualified by field names, or repeated)."""


def kept_private(headers: list[Header]) -> list[Header]:
    """``headers`` with their ``Cache-Control`` fields made into one that says ``private``
    (unqualified: ``private="Set-Cookie"`` keeps only the named fields from shared caches),
    placed where the first one was, or last."""
    directives: list[str] = []
    first: int | None = None
    kept: list[Header] = []
    for name, value in headers:
        if name.lower() == "cache-control":
            first = len(kept) if first is None else first
            directives.extend(_directives(value))
        else:
            kept.append((name, value))
    names = [_name(directive) for directive in directives]
    if "no-store" in names:
        return headers
    rest = [d for d, n in zip(directives, names, strict=True) if n not in _REPLACED]
    field = ("Cache-Control", ", ".join(["private", *rest]))
    kept.insert(len(kept) if first is None else first, field)
    return kept


def private_after(first: ResponseFilter | None) -> ResponseFilter:
    """A response filter that runs ``first`` (the gateway's cookie guard), then makes the
    response private."""
    if first is None:
        return kept_private
    return lambda headers: kept_private(first(headers))


def must_stay_private(credential_source: str | None, added: Sequence[Header]) -> bool:
    """Whether a response is one of the two kinds above: the credential came in the query,
    or the fields the gateway adds hold a ``Set-Cookie``."""
    return credential_source == "query" or any(n.lower() == "set-cookie" for n, _ in added)


def _directives(value: str) -> list[str]:
    """RFC 9111 §5.2: ``#cache-directive``, split at commas outside quoted strings
    (``private="Set-Cookie, X-A"`` is one directive); empty list members dropped."""
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            out.append("".join(current).strip(" \t"))
            current = []
            continue
        current.append(char)
    out.append("".join(current).strip(" \t"))
    return [directive for directive in out if directive]


def _name(directive: str) -> str:
    return directive.split("=", 1)[0].strip(" \t").lower()
