"""Path and host patterns for routes (RFC 3986 §3.2.2 host, §3.3 path; RFC 9110 §7.2 Host).

Patterns match the *normalised* path (``gateway.routing.paths``) as the route's upstream
reads it (``gateway.routing.semantics``), so they are checked at compile time to be in
normalised form themselves: an exact "/a/../b" or "/a/%7e" route could never match and would
only hide a configuration mistake, which matters most for a protected route that a catch-all
would then silently replace. Each path pattern also exposes ``literal_prefix``, a string
every matching path starts with, which the route table uses as an index key instead of
testing every pattern on every request. Globs and regexes run on RE2 (linear time).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, Protocol

from gateway.problems import InvalidPath
from gateway.routing.paths import normalise_target
from gateway.routing.regex import LinearRegex
from gateway.routing.semantics import STRICT, PathSemantics

PathKind = Literal["exact", "prefix", "glob", "regex"]

# Already-normal host names skip the slow path; labels of letters, digits, "-" and "_".
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_MAX_HOST_LENGTH = 253
# An escape cut short at the end of a literal prefix ("/a%2" of "/a%2[0-9]"), and the
# escaped bytes of a UTF-8 sequence that may be cut short in the same way.
_PARTIAL_ESCAPE = re.compile(r"%[0-9A-Fa-f]?$")
_TRAILING_NON_ASCII = re.compile(r"(?:%[89A-Fa-f][0-9A-Fa-f])+$")
_UTF8_MAX = 4


class PathPattern(Protocol):
    literal_prefix: str

    def matches(self, path: str) -> bool: ...


class _Exact:
    __slots__ = ("literal_prefix",)

    def __init__(self, pattern: str) -> None:
        self.literal_prefix = pattern

    def matches(self, path: str) -> bool:
        return path == self.literal_prefix


class _Prefix:
    """Segment-aware: "/api" covers "/api" and "/api/…" but never "/apix"."""

    __slots__ = ("_below", "literal_prefix")

    def __init__(self, pattern: str) -> None:
        self.literal_prefix = pattern
        self._below = pattern if pattern.endswith("/") else pattern + "/"

    def matches(self, path: str) -> bool:
        return path.startswith(self._below) or path == self.literal_prefix


class _Regex:
    __slots__ = ("_regex", "literal_prefix")

    def __init__(self, regex: LinearRegex, literal_prefix: str) -> None:
        self._regex = regex
        self.literal_prefix = literal_prefix

    def matches(self, path: str) -> bool:
        return self._regex.fullmatch(path)


def compile_path_pattern(
    kind: PathKind, pattern: str, semantics: PathSemantics = STRICT
) -> PathPattern:
    """Compile one route path pattern for an upstream that reads paths with ``semantics``.

    The pattern then matches the upstream's view of a path (``semantics.view``): exact,
    prefix and glob patterns are folded the same way; a regex is matched against the view
    as written (case-insensitively on a case-insensitive upstream). ``ValueError`` says
    what is wrong with the pattern.
    """
    if kind == "regex":
        return _compile_regex(pattern, semantics)
    if kind not in ("exact", "prefix", "glob"):
        raise ValueError(f"unknown path match kind {kind!r}")
    _require_normalised(kind, pattern)
    try:
        view = semantics.view(pattern)
    except InvalidPath as exc:
        raise ValueError(f"{kind} path {pattern!r} can never match: {exc.detail}") from None
    if kind == "exact" or (kind == "glob" and "*" not in view):
        return _Exact(view)
    if kind == "prefix":
        return _Prefix(view)
    if view.endswith("/**") and "*" not in view[:-3]:
        # The commonest glob, "/a/**", is "/a" and everything below it: a prefix.
        return _Prefix(view[:-3] or "/")
    return _Regex(LinearRegex(_glob_to_regex(view)), _glob_literal_prefix(view))


def check_prefix_path(what: str, prefix: str) -> None:
    """A rewrite prefix must be a normalised path without parameters, or ValueError.

    ``strip_prefix`` compares whole segments of the normalised path without their
    parameters, so "/v2/../a" or "/a;x" would never be stripped; ``add_prefix`` is sent
    upstream as written, so it must be something the normaliser would have let through
    unchanged, and parameters on it would be dropped by servlet-style upstreams.
    """
    _require_normalised(what, prefix.rstrip("/") or "/")


def normalise_host(raw: str | None) -> str | None:
    """Lowercase, drop the port and one trailing dot; bracketed IPv6 kept, in canonical form.

    Raises ``ValueError`` for anything that is not a plausible host, so that a caller can
    answer 400 instead of letting a junk Host fall through to a catch-all route.
    """
    if not raw:
        return None
    if len(raw) <= _MAX_HOST_LENGTH and _HOST_NAME.fullmatch(raw):
        return raw
    # Non-ASCII is refused before lowercasing: "\u212a".lower() is "k" (Kelvin sign).
    if not raw.isascii():
        raise ValueError(f"invalid host {raw!r}: not ASCII (use the IDNA A-label)")
    host = raw.lower()
    if host.startswith("["):
        return _normalise_ipv6(host)
    name, _, port = host.partition(":")
    if not _valid_port(port):
        raise ValueError(f"invalid host {raw!r}: bad port")
    name = name.removesuffix(".")
    if not name or len(name) > _MAX_HOST_LENGTH or _HOST_NAME.fullmatch(name) is None:
        raise ValueError(f"invalid host {raw!r}")
    return name


class HostPattern:
    """An exact host, or "*.example.com": one or more labels below example.com, not itself.

    ``matches`` expects a host already passed through ``normalise_host``.
    """

    __slots__ = ("_suffix", "exact")

    exact: str | None
    _suffix: str | None

    def __init__(self, pattern: str) -> None:
        wildcard = pattern.startswith("*.")
        body = pattern[2:] if wildcard else pattern
        if body.rpartition("]")[2].count(":"):
            raise ValueError(f"host pattern {pattern!r}: ports are not part of a host pattern")
        host = normalise_host(body)
        if host is None:
            raise ValueError(f"host pattern {pattern!r} is empty")
        if wildcard and host.startswith("["):
            raise ValueError(f"host pattern {pattern!r}: an IP address has no subdomains")
        self.exact = None if wildcard else host
        self._suffix = "." + host if wildcard else None

    def matches(self, host: str | None) -> bool:
        if host is None:
            return False
        if self._suffix is None:
            return host == self.exact
        return host.endswith(self._suffix)


def _require_normalised(kind: str, pattern: str) -> None:
    try:
        target = normalise_target(pattern)
    except InvalidPath as exc:
        raise ValueError(f"{kind} path {pattern!r}: {exc.detail}") from None
    if target.query is not None or target.path != pattern:
        raise ValueError(
            f"{kind} path {pattern!r} can never match a normalised path; write {target.path!r}"
        )
    if ";" in pattern:
        # Routes see paths without parameters (refused, or removed when path_parameters
        # is on), and strip_prefix compares segments without them: a ";" never matches.
        raise ValueError(f"{kind} path {pattern!r}: paths are matched without ';' parameters")


def _compile_regex(pattern: str, semantics: PathSemantics) -> _Regex:
    try:
        regex = LinearRegex(pattern, case_insensitive=semantics.case_insensitive)
        # The prefix of the pattern as written, lowered like the views it is looked up by
        # (an ASCII letter matched case-insensitively is one of its two cases).
        literal = LinearRegex(pattern).literal_prefix()
    except ValueError as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    _require_possible_prefix(pattern, literal)
    return _Regex(regex, literal.lower() if semantics.case_insensitive else literal)


def _require_possible_prefix(pattern: str, literal: str) -> None:
    """Refuse a regex whose every match starts with something no normalised path does.

    The literal may stop anywhere, mid-segment or mid-escape, so only what it could still
    grow into is tested: the part up to an incomplete escape or UTF-8 sequence, followed by
    an ordinary character.
    """
    if not literal:
        return
    if ";" in literal:
        raise ValueError(f"regex {pattern!r}: paths are matched without ';' parameters")
    if not literal.startswith("/"):
        raise ValueError(f"regex {pattern!r} can never match: normalised paths start with '/'")
    probe = _completed(_PARTIAL_ESCAPE.sub("", literal)) + "x"
    try:
        normal = normalise_target(probe)
    except InvalidPath as exc:
        raise ValueError(f"regex {pattern!r} starts with {literal!r}: {exc.detail}") from None
    if normal.query is not None or normal.path != probe:
        raise ValueError(
            f"regex {pattern!r} starts with {literal!r}, which no normalised path does"
        )


def _completed(stem: str) -> str:
    """``stem`` without the escaped bytes of a UTF-8 sequence it ends in the middle of."""
    run = _TRAILING_NON_ASCII.search(stem)
    if run is None:
        return stem
    octets = bytes.fromhex(run[0].replace("%", ""))
    # A cut-short sequence misses at most three of its (at most four) bytes.
    for cut in range(min(_UTF8_MAX - 1, len(octets)) + 1):
        try:
            octets[: len(octets) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return stem[: len(stem) - 3 * cut]
    return stem  # not UTF-8 however it is cut: normalising says so


def _glob_to_regex(pattern: str) -> str:
    """ "*" stays inside one segment; a whole "**" segment spans zero or more segments."""
    out: list[str] = ["(?s)"]
    for segment in pattern.split("/")[1:]:
        if segment == "**":
            out.append("(?:/.*)?")
        else:
            out.append("/" + "[^/]*".join(re.escape(part) for part in segment.split("*")))
    return "".join(out)


def _glob_literal_prefix(pattern: str) -> str:
    prefix = pattern[: pattern.index("*")]
    star_segment = pattern[len(prefix) :].partition("/")[0]
    # "/a/**" also matches "/a", so the "/" before a "**" segment is not guaranteed.
    return prefix[:-1] if star_segment == "**" and prefix.endswith("/") else prefix


def _valid_port(port: str) -> bool:
    """RFC 3986 §3.2.3: port = *DIGIT; an empty port is allowed and means the default."""
    return not port or (port.isdigit() and len(port) <= 5 and int(port) < 65536)


def _normalise_ipv6(host: str) -> str:
    literal, bracket, rest = host[1:].partition("]")
    if not bracket or (rest and not rest.startswith(":")):
        raise ValueError(f"invalid host {host!r}")
    if not _valid_port(rest[1:]):
        raise ValueError(f"invalid host {host!r}: bad port")
    if "%" in literal:
        raise ValueError(f"invalid host {host!r}: zone identifiers are not accepted")
    try:
        address = ipaddress.IPv6Address(literal)
    except ValueError:
        raise ValueError(f"invalid host {host!r}: not an IPv6 address") from None
    return f"[{address.compressed}]"
