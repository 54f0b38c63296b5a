"""What a rate limit counts by: a route's compiled limits and the key of a request under each.

A key combines parts of the validated identity (``client_id``, ``sub``, ``claim:NAME``) and of
the request (``ip``: the client address the handler resolved through ``trusted_proxies``;
``header:NAME``). Identity parts are trustworthy only because limits run after
authentication. Every part is bounded (a long value is replaced by its SHA-256), so memory
per key is bounded whatever a client sends; an absent part is the empty string, so clients
without it share one bucket rather than escaping the limit.

A ``header:NAME`` or ``claim:NAME`` part may be a credential (``header:Authorization``, a
``sid`` claim), so it is kept only as its SHA-256 (``digests.token_digest``, as the identity
cache names tokens), whatever its length: no bucket, here or in Redis through the cluster
sync, holds a token, a code, a session id or a proof as sent (RFC 6750 §5.3).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Protocol

from gateway.auth.digests import token_digest
from gateway.auth.identity import Identity
from gateway.auth.ratelimit import Rate

MAX_PART_CHARS: Final = 128


class HeaderGetter(Protocol):
    """A request header's value by case-insensitive name (a dict in tests, the request's
    headers on the request path)."""

    def get(self, key: str, /) -> str | None: ...


Part = Callable[[Identity | None, str, HeaderGetter], str]


def _bounded(value: str) -> str:
    if len(value) <= MAX_PART_CHARS:
        return value
    return "#" + token_digest(value).hex()


def _digested(value: str) -> str:
    """A part that may be a secret: its SHA-256 in hex, never the value ("" stays "")."""
    return token_digest(value).hex() if value else ""


def _claim_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def client_address(ip: str) -> str:
    """An IPv4 address as is; an IPv6 address as its /64, the block one subscriber usually
    holds (RFC 6177 §3), so a client cannot get a fresh bucket per address it picks."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return _bounded(ip)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return f"{int(address) >> 64:016x}::/64"


def _issued(identity: Identity, value: str | None) -> str:
    """OpenID Connect Core §5.7: "The sub (subject) and iss (issuer) Claims, used together,
    are the only Claims that an RP can rely upon as a stable identifier"; a client id is
    its issuer's too. Keyed without the issuer, a user of one issuer could spend the quota
    of another issuer's user who happens to have the same value."""
    return _bounded(f"{identity.issuer}\x1f{value}") if value else ""


def _client_id(identity: Identity | None, ip: str, headers: HeaderGetter) -> str:
    return _issued(identity, identity.client_id) if identity is not None else ""


def _subject(identity: Identity | None, ip: str, headers: HeaderGetter) -> str:
    return _issued(identity, identity.subject) if identity is not None else ""


def _address(identity: Identity | None, ip: str, headers: HeaderGetter) -> str:
    return client_address(ip)


def _header(name: str) -> Part:
    def read(identity: Identity | None, ip: str, headers: HeaderGetter) -> str:
        return _digested(headers.get(name) or "")

    return read


def _claim(name: str) -> Part:
    def read(identity: Identity | None, ip: str, headers: HeaderGetter) -> str:
        return _digested(_claim_text(identity.claims.get(name))) if identity is not None else ""

    return read


def compile_part(part: str) -> Part:
    fixed: dict[str, Part] = {"client_id": _client_id, "sub": _subject, "ip": _address}
    if part in fixed:
        return fixed[part]
    kind, _, name = part.partition(":")
    if kind == "header":
        return _header(name)
    if kind == "claim":
        return _claim(name)
    raise ValueError(f"unknown key part {part!r}")


@dataclass(slots=True, eq=False)
class CompiledLimit:
    """One limit of one route, with its counters (plain ints the metrics exporter reads).

    ``namespace`` (route and limit name) keeps buckets of different routes and limits apart
    locally and in Redis; ``fallback`` is the rate enforced while replicas cannot share.
    """

    name: str
    namespace: str
    rate: Rate
    fallback: Rate
    parts: tuple[Part, ...]
    allowed: int = 0
    limited: int = 0

    def key_of(self, identity: Identity | None, ip: str, headers: HeaderGetter) -> tuple[str, ...]:
        parts = self.parts
        if len(parts) == 1:  # the common case, without a generator
            return (self.namespace, parts[0](identity, ip, headers))
        return (self.namespace, *[part(identity, ip, headers) for part in parts])


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """A route's compiled ``rate_limits``: ``limits`` for requests with an identity,
    ``anonymous`` for those without one; the ``RateLimit-Policy`` values are fixed."""

    route: str
    limits: tuple[CompiledLimit, ...]
    anonymous: tuple[CompiledLimit, ...]
    headers: bool
    policy: str
    anonymous_policy: str

    def counters(self) -> Iterator[tuple[str, str, str, int, int]]:
        """(route, group, limit, allowed, limited) for each limit, group being ``limits`` or
        ``anonymous``: plain ints for the metrics exporter to read at scrape time."""
        for group, limits in (("limits", self.limits), ("anonymous", self.anonymous)):
            for limit in limits:
                yield self.route, group, limit.name, limit.allowed, limit.limited
