"""The route table: first match wins, 404 vs 405 (RFC 9110 §9.3.2, §15.5.5, §15.5.6).

Entries are compiled once. Matching does not test every pattern: entries are bucketed by
exact host and indexed by their path pattern's ``literal_prefix``, and only entries whose
literal prefix starts the request path are tested, still in configuration order, so the
index changes cost and never the answer.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from gateway.problems import BadRequest, MethodNotAllowed, NotFound
from gateway.routing.patterns import (
    HostPattern,
    PathKind,
    PathPattern,
    compile_path_pattern,
    normalise_host,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RouteEntry(Generic[T]):
    """One route's match criteria; ``target`` is returned untouched when it matches."""

    hosts: tuple[str, ...] | None
    path_kind: str  # exact | prefix | glob | regex; anything else is a ValueError
    path_pattern: str
    methods: frozenset[str] | None
    target: T


@dataclass(frozen=True, slots=True)
class _Compiled(Generic[T]):
    hosts: tuple[HostPattern, ...] | None
    path: PathPattern
    methods: frozenset[str] | None
    target: T

    def host_matches(self, host: str | None) -> bool:
        return self.hosts is None or any(pattern.matches(host) for pattern in self.hosts)


class _PrefixIndex:
    """Entry positions keyed by literal prefix, probed once per distinct prefix length."""

    __slots__ = ("_by_prefix", "_lengths")

    def __init__(self, items: Iterable[tuple[str, int]]) -> None:
        grouped: dict[str, list[int]] = {}
        for prefix, position in items:
            grouped.setdefault(prefix, []).append(position)
        self._by_prefix = {prefix: tuple(group) for prefix, group in grouped.items()}
        self._lengths = tuple(sorted({len(prefix) for prefix in grouped}))

    def hits(self, path: str) -> Iterator[tuple[int, ...]]:
        for length in self._lengths:
            if length > len(path):
                return
            group = self._by_prefix.get(path[:length])
            if group is not None:
                yield group


class RouteTable(Generic[T]):
    """Compiled routes. ``match`` is pure and safe to share between concurrent requests."""

    __slots__ = ("_any_host", "_by_host", "_entries")

    def __init__(self, entries: Sequence[RouteEntry[T]]) -> None:
        self._entries = tuple(_compile(index, entry) for index, entry in enumerate(entries))
        any_host: list[tuple[str, int]] = []
        by_host: dict[str, list[tuple[str, int]]] = {}
        for position, entry in enumerate(self._entries):
            key = (entry.path.literal_prefix, position)
            exact = _exact_hosts(entry.hosts)
            if exact is None:
                any_host.append(key)
            for host in exact or ():
                by_host.setdefault(host, []).append(key)
        self._any_host = _PrefixIndex(any_host)
        self._by_host = {host: _PrefixIndex(keys) for host, keys in by_host.items()}

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, host: str | None, path: str, method: str) -> T:
        """The first entry matching host, normalised path and method.

        Raises ``NotFound`` when no entry matches host and path, ``MethodNotAllowed`` (with
        the union of the methods those entries accept) when some did but not for ``method``,
        and ``BadRequest`` for a Host that is not a host.
        """
        host = _request_host(host)
        allowed: set[str] = set()
        for position in self._candidates(host, path):
            entry = self._entries[position]
            if not (entry.host_matches(host) and entry.path.matches(path)):
                continue
            # RFC 9110 §9.1: "The method token is case-sensitive", so "get" is not GET.
            if entry.methods is None or method in entry.methods:
                return entry.target
            allowed |= entry.methods
        if allowed:
            raise MethodNotAllowed(allowed)
        raise NotFound()

    def candidates(self, path: str, host: str | None = None) -> tuple[int, ...]:
        """Positions of the entries ``match`` would test, in order: shows the index at work."""
        return tuple(self._candidates(_request_host(host), path))

    def _candidates(self, host: str | None, path: str) -> Iterator[int]:
        groups = list(self._any_host.hits(path))
        bucket = self._by_host.get(host) if host is not None else None
        if bucket is not None:
            groups.extend(bucket.hits(path))
        if len(groups) == 1:
            return iter(groups[0])
        return heapq.merge(*groups)


def _compile(index: int, entry: RouteEntry[T]) -> _Compiled[T]:
    try:
        # The cast is checked at runtime: compile_path_pattern refuses an unknown kind.
        path = compile_path_pattern(cast(PathKind, entry.path_kind), entry.path_pattern)
        if entry.hosts is not None and not entry.hosts:
            raise ValueError("an empty host list matches nothing; use None for any host")
        hosts = None if entry.hosts is None else tuple(HostPattern(h) for h in entry.hosts)
        methods = _effective_methods(entry.methods)
    except ValueError as exc:
        raise ValueError(f"route {index}: {exc}") from None
    return _Compiled(hosts, path, methods, entry.target)


def _effective_methods(methods: frozenset[str] | None) -> frozenset[str] | None:
    if methods is None:
        return None
    if not methods:
        raise ValueError("an empty method list matches nothing; use None for any method")
    upper = frozenset(method.upper() for method in methods)
    # RFC 9110 §9.3.2: HEAD is GET without content, so a route serving GET serves HEAD too.
    return upper | {"HEAD"} if "GET" in upper else upper


def _exact_hosts(hosts: tuple[HostPattern, ...] | None) -> tuple[str, ...] | None:
    """The hosts to bucket an entry under, or None when it must be tried for any host."""
    if hosts is None:
        return None
    exact = tuple(pattern.exact for pattern in hosts if pattern.exact is not None)
    return exact if len(exact) == len(hosts) else None


def _request_host(raw: str | None) -> str | None:
    try:
        return normalise_host(raw)
    except ValueError:
        # RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
        # HTTP/1.1 request message that ... contains ... a Host header field with an invalid
        # field value."
        raise BadRequest("The Host header is not a valid host.") from None
