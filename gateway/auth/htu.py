"""RFC 9449 §4.3 ``htu`` comparison: RFC 3986 §6.2.2 and §6.2.3 normalisation of http(s) URIs.

RFC 9449 §4.3: "To reduce the likelihood of false negatives, servers SHOULD employ
syntax-based normalization (Section 6.2.2 of [RFC3986]) and scheme-based normalization
(Section 6.2.3 of [RFC3986]) before comparing the htu claim." Both the proof's ``htu`` and
the URI the client used (built by the caller from the configured external origin, never
from forwarded headers) pass through ``normalise_htu``, and the results are compared as
strings. Query and fragment are dropped: the check ignores them (RFC 9449 §4.3 item 9).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

# RFC 3986 §2: the characters a URI may hold at all (unreserved, reserved, "%").
_URI_CHARS: Final = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PCT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
# RFC 3986 §3: scheme "://" authority path-abempty [ "?" query ] [ "#" fragment ].
_HTTP_URI: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^?#]*)(?:\?[^#]*)?(?:#.*)?")
_AUTHORITY: Final = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(?::([0-9]*))?")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_MAX_LENGTH: Final = 8192


class NotAnHttpUri(ValueError):
    """The text is not an absolute http(s) URI with a host. It carries no message: its one
    caller, the DPoP check, answers with its own description (RFC 9449 §4.3 item 9), so the
    reason each raise has is a comment beside it."""


def _percent(match: re.Match[str]) -> str:
    """RFC 3986 §6.2.2.1/§6.2.2.2: escapes of unreserved characters are decoded, every other
    escape is written with uppercase hexadecimal digits."""
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _host(text: str) -> str:
    if text.startswith("["):
        # RFC 3986 §3.2.2 IP-literal; written the one canonical way (RFC 5952).
        try:
            return f"[{ipaddress.IPv6Address(text[1:-1]).compressed}]"
        except ValueError:  # the IP literal is not an IPv6 address
            raise NotAnHttpUri from None
    # RFC 9110 §4.2.1: a recipient "MUST reject" an http(s) URI with an empty host.
    if not text:
        raise NotAnHttpUri
    # RFC 3986 §6.2.2.1: the host is case-insensitive: lowercase, but escapes stay uppercase.
    return _PCT.sub(lambda m: "%" + m.group(1).upper(), _PCT.sub(_percent, text).lower())


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path (one that starts with "/")."""
    segments = path.split("/")[1:]
    output: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
            continue
        if index == last:  # "/a/." and "/a/b/.." end in a slash
            output.append("")
    return "/" + "/".join(output)


def normalise_htu(uri: str) -> str:
    """The normal form of an http(s) URI without query and fragment; ``NotAnHttpUri`` for
    anything that is not an absolute http(s) URI with a host."""
    if len(uri) > _MAX_LENGTH or _URI_CHARS.fullmatch(uri) is None:
        raise NotAnHttpUri  # too long, or characters a URI cannot hold
    if _BAD_PERCENT.search(uri) is not None:
        raise NotAnHttpUri  # a malformed percent-encoding
    parts = _HTTP_URI.fullmatch(uri)
    if parts is None:
        raise NotAnHttpUri  # not absolute
    scheme_text, authority, path = parts.groups()
    scheme = scheme_text.lower()  # RFC 3986 §6.2.2.1
    if scheme not in _DEFAULT_PORTS:
        raise NotAnHttpUri
    # RFC 9110 §4.2.4: a sender "MUST NOT generate the userinfo subcomponent" for http(s).
    if "@" in authority:
        raise NotAnHttpUri
    host_port = _AUTHORITY.fullmatch(authority)
    if host_port is None:
        raise NotAnHttpUri
    host = _host(host_port.group(1))
    port_text = host_port.group(2)
    port = ""
    # RFC 3986 §6.2.3: an empty port, or the scheme's default port, is omitted.
    if port_text:
        # Leading zeros do not change a port; the length check keeps int() from its
        # ValueError for a text of more than 4,300 digits.
        digits = port_text.lstrip("0") or "0"
        number = int(digits) if len(digits) <= 5 else 65536
        if number > 65535:
            raise NotAnHttpUri  # the port is out of range
        if number != _DEFAULT_PORTS[scheme]:
            port = f":{number}"
    # RFC 3986 §6.2.3: "an empty path component should be normalized to a path of "/"";
    # §6.2.2: escapes are normalised before dot-segments are removed.
    path = remove_dot_segments(_PCT.sub(_percent, path or "/"))
    return f"{scheme}://{host}{port}{path}"


def external_uri(external_url: str, path: str) -> str:
    """The URI the client used: the configured external URL (origin and any path prefix a
    front proxy strips) followed by the request's normalised path, before any rewrite."""
    return external_url.rstrip("/") + path
