"""RFC 6749 §4.1.1 with RFC 7636 §4.3 and OIDC Core §3.1.2.1: the authorization request URL,
and the one place that decides where a browser may be sent back to after a login.

Open redirects are the classic flaw of login flows (RFC 6749 §10.15; RFC 9700 §4.11): a
return URL taken from a request that sends the browser to another site after a successful
login turns the gateway into a phishing relay. Only a same-origin relative path survives;
anything else, or anything we are unsure of, becomes ``/``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from typing import Final
from urllib.parse import unquote, urlencode, urlsplit

DEFAULT_RETURN: Final = "/"
MAX_RETURN_BYTES: Final = 1024
_DECODE_ROUNDS: Final = 3
# Printable ASCII except the backslash: no space, no control character (browsers strip tabs
# and newlines out of URLs, so "/\t/evil.com" would become "//evil.com"), nothing non-ASCII.
_PLAIN: Final = re.compile(r"[\x21-\x5b\x5d-\x7e]+")
RESERVED_PARAMETERS: Final = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "request",
        "request_uri",
    }
)


def safe_return_path(candidate: str | None, *, reserved: Collection[str] = ()) -> str:
    """``candidate`` if it is a same-origin relative reference (a path and maybe a query),
    normalised, else ``/``. ``reserved`` paths (the callback, the logout path) also become
    ``/``: returning there after a login would only start another round.

    Refused: a scheme (``https:evil.com``, ``javascript:``), a network path (``//evil.com``)
    in any spelling a browser or an upstream might turn into one (``/\\evil.com``,
    ``/%2F%2Fevil.com``, ``/%5Cevil.com``, ``/.//evil.com``, ``/%2e%2e//evil.com``, ``/%EF%BC%8F
    evil.com``), control characters raw or encoded (browsers drop tabs and newlines, so
    ``/\t/evil.com`` reads as ``//evil.com``), raw whitespace or non-ASCII, a fragment, and
    anything too long.
    """
    if not candidate or len(candidate) > MAX_RETURN_BYTES or _PLAIN.fullmatch(candidate) is None:
        return DEFAULT_RETURN
    if "#" in candidate:
        return DEFAULT_RETURN
    path, mark, query = candidate.partition("?")
    normalised = remove_dot_segments(path)
    if not (_is_local_path(path) and _is_local_path(normalised)):
        return DEFAULT_RETURN
    # Re-check the path under every decoding an upstream or a later redirect might apply; the
    # query cannot move the origin once the path is local.
    decoded = path
    try:
        for _ in range(_DECODE_ROUNDS):
            decoded = unquote(decoded, errors="strict")
            if not _decoded_is_local(decoded):
                return DEFAULT_RETURN
        if unquote(decoded, errors="strict") != decoded:
            return DEFAULT_RETURN  # encoded more deeply than any honest URL is
    except UnicodeDecodeError:
        return DEFAULT_RETURN  # percent-escapes that are not UTF-8
    if normalised in reserved or remove_dot_segments(decoded) in reserved:
        return DEFAULT_RETURN
    return normalised + mark + query


def _is_local_path(path: str) -> bool:
    """An absolute path on this origin: one leading "/", then not "/" or "\\"."""
    if not path.startswith("/") or path[1:2] in ("/", "\\"):
        return False
    parts = urlsplit(path)
    return not parts.scheme and not parts.netloc


def _decoded_is_local(decoded: str) -> bool:
    """Still local once decoded, and once compatibility-normalised (NFKC turns U+FF0F
    FULLWIDTH SOLIDUS into "/", which some upstream frameworks apply before redirecting)."""
    for text in (decoded, unicodedata.normalize("NFKC", decoded)):
        if not text.isprintable() or "\\" in text:
            return False
        if not (_is_local_path(text) and _is_local_path(remove_dot_segments(text))):
            return False
    return True


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, as a browser resolves a path before requesting it."""
    output: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if len(output) > 1:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/".join(output)


def authorization_url(
    endpoint: str,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    state: str,
    nonce: str,
    code_challenge: str,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The URL the browser is sent to (RFC 6749 §4.1.1, RFC 7636 §4.3, OIDC Core §3.1.2.1).

    RFC 6749 §3.1: the endpoint "MAY include an "application/x-www-form-urlencoded"
    formatted ... query component ..., which MUST be retained when adding additional query
    parameters. The endpoint URI MUST NOT include a fragment component."
    """
    parts = urlsplit(endpoint)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
        raise ValueError("the authorization endpoint must be an http(s) URL without fragment")
    # OIDC Core §3.1.2.1: "OpenID Connect requests MUST contain the openid scope value."
    scope = list(dict.fromkeys(["openid", *scopes]))
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(scope),
        "state": state,
        "nonce": nonce,
        "code_challenge": code_challenge,
        # RFC 7636 §4.3: S256 only; "plain" would hand the verifier to anyone who sees the URL.
        "code_challenge_method": "S256",
    }
    for name, value in (extra or {}).items():
        if name in RESERVED_PARAMETERS:
            raise ValueError(f"the authorization parameter {name!r} is set by the gateway")
        params[name] = value
    query = urlencode(params)
    joined = f"{parts.query}&{query}" if parts.query else query
    base = endpoint.split("?", 1)[0]
    return f"{base}?{joined}"
