"""Path and host patterns for routes (RFC 3986 §3.2.2 host, §3.3 path; RFC 9110 §7.2 Host).

Patterns match the *normalised* path (``gateway.routing.paths``), so they are checked at
compile time to be in normalised form themselves: an exact "/a/../b" or "/a/%7e" route could
never match and would only hide a configuration mistake. Each path pattern also exposes
``literal_prefix``, a string every matching path starts with, which the route table uses as
an index key instead of testing every pattern on every request.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, Protocol

from gateway.problems import InvalidPath
from gateway.routing.paths import normalise_target

PathKind = Literal["exact", "prefix", "glob", "regex"]

_REGEX_STOP = frozenset(".^$[]\\()|}")
_REGEX_QUANTIFIERS = frozenset("*+?{")

# Already-normal host names skip the slow path; labels of letters, digits, "-" and "_".
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_MAX_HOST_LENGTH = 253


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

    def __init__(self, regex: re.Pattern[str], literal_prefix: str) -> None:
        self._regex = regex
        self.literal_prefix = literal_prefix

    def matches(self, path: str) -> bool:
        return self._regex.fullmatch(path) is not None


def compile_path_pattern(kind: PathKind, pattern: str) -> PathPattern:
    """Compile one route path pattern; ``ValueError`` says what is wrong with it."""
    if kind == "regex":
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
        return _Regex(regex, _regex_literal_prefix(pattern))
    if kind not in ("exact", "prefix", "glob"):
        raise ValueError(f"unknown path match kind {kind!r}")
    _require_normalised(kind, pattern)
    if kind == "exact" or (kind == "glob" and "*" not in pattern):
        return _Exact(pattern)
    if kind == "prefix":
        return _Prefix(pattern)
    return _Regex(re.compile(_glob_to_regex(pattern), re.DOTALL), _glob_literal_prefix(pattern))


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
    _check_port(raw, port)
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


def _glob_to_regex(pattern: str) -> str:
    """ "*" stays inside one segment; a whole "**" segment spans zero or more segments."""
    out: list[str] = []
    for segment in pattern.split("/")[1:]:
        if segment == "**":
            out.append("(?:/.*)?")
        else:
            out.append("/" + "[^/]*".join(re.escape(part) for part in segment.split("*")))
    return "".join(out)


def _glob_literal_prefix(pattern: str) -> str:
    prefix = pattern[: pattern.index("*")]
    star_segment = pattern[len(prefix) :].split("/", 1)[0]
    # "/a/**" also matches "/a", so the "/" before a "**" segment is not guaranteed.
    return prefix[:-1] if star_segment == "**" and prefix.endswith("/") else prefix


def _regex_literal_prefix(pattern: str) -> str:
    """The literal run at the start of a regex, erring short.

    A top-level "|" means no common prefix at all; a quantifier (or a comment, which a
    quantifier can follow) may make the character before it optional, so that character is
    dropped; any other metacharacter or escape ends the run.
    """
    body = pattern.removeprefix("^")
    if not body.startswith("/") or _has_top_level_alternation(body):
        return ""
    literal: list[str] = []
    for position, char in enumerate(body):
        # A comment is transparent: "/a(?#x)*" repeats the "a".
        if char in _REGEX_QUANTIFIERS or body.startswith("(?#", position):
            literal = literal[:-1]
            break
        if char in _REGEX_STOP:
            break
        literal.append(char)
    return "".join(literal)


def _has_top_level_alternation(pattern: str) -> bool:
    """Whether a "|" sits outside every group, class, escape and comment."""
    depth = 0
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 1
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            i += 1 if pattern.startswith("^", i + 1) else 0
            i += 1 if pattern.startswith("]", i + 1) else 0
        elif pattern.startswith("(?#", i):
            # A comment ends at the first ")" whatever it holds.
            i = pattern.find(")", i)
            if i < 0:
                return True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            return True
        i += 1
    return False


def _check_port(raw: str, port: str) -> None:
    # RFC 3986 §3.2.3: port = *DIGIT (an empty port is allowed and means the default).
    if port and not (port.isdigit() and len(port) <= 5 and int(port) < 65536):
        raise ValueError(f"invalid host {raw!r}: bad port")


def _normalise_ipv6(host: str) -> str:
    literal, bracket, rest = host[1:].partition("]")
    if not bracket or (rest and not rest.startswith(":")):
        raise ValueError(f"invalid host {host!r}")
    _check_port(host, rest[1:])
    if "%" in literal:
        raise ValueError(f"invalid host {host!r}: zone identifiers are not accepted")
    try:
        address = ipaddress.IPv6Address(literal)
    except ValueError:
        raise ValueError(f"invalid host {host!r}: not an IPv6 address") from None
    return f"[{address.compressed}]"
