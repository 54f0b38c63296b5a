"""The route table: first match wins, 404 vs 405 (RFC 9110 §9.3.2, §15.5.5, §15.5.6).

Entries are compiled once. Matching does not test every pattern: entries are bucketed by
exact host and indexed by their path pattern's ``literal_prefix``, and only entries whose
literal prefix starts the request path are tested, still in configuration order, so the
index changes cost and never the answer.

Each entry is matched on the path as its upstream reads it (``PathSemantics``). Entries are
grouped by semantics, each group with its own index over its own view of the path; a table
whose upstreams all read paths strictly has one group and computes no view.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from gateway.problems import BadRequest, InvalidPath, MethodNotAllowed, NotFound
from gateway.routing.patterns import (
    HostPattern,
    PathKind,
    PathPattern,
    compile_path_pattern,
    normalise_host,
)
from gateway.routing.semantics import STRICT, PathSemantics

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RouteEntry(Generic[T]):
    """One route's match criteria; ``target`` is returned untouched when it matches."""

    hosts: tuple[str, ...] | None
    path_kind: str  # exact | prefix | glob | regex; anything else is a ValueError
    path_pattern: str
    methods: frozenset[str] | None
    target: T
    semantics: PathSemantics = STRICT  # how the route's upstream reads paths


@dataclass(frozen=True, slots=True)
class _Compiled(Generic[T]):
    hosts: tuple[HostPattern, ...] | None
    path: PathPattern
    methods: frozenset[str] | None
    target: T
    group: int  # which view of the path the pattern is tested on

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

    def __bool__(self) -> bool:
        return bool(self._by_prefix)

    def hits(self, path: str) -> Iterator[tuple[int, ...]]:
        for length in self._lengths:
            if length > len(path):
                return
            group = self._by_prefix.get(path[:length])
            if group is not None:
                yield group


class _Group:
    """The entries whose upstreams share one ``PathSemantics``, indexed on its view."""

    __slots__ = ("any_host", "by_host", "semantics")

    def __init__(
        self, semantics: PathSemantics, entries: Iterable[tuple[int, _Compiled[Any]]]
    ) -> None:
        any_host: list[tuple[str, int]] = []
        by_host: dict[str, list[tuple[str, int]]] = {}
        for position, entry in entries:
            key = (entry.path.literal_prefix, position)
            exact = _exact_hosts(entry.hosts)
            if exact is None:
                any_host.append(key)
            for host in exact or ():
                by_host.setdefault(host, []).append(key)
        self.semantics = semantics
        self.any_host = _PrefixIndex(any_host)
        self.by_host = {host: _PrefixIndex(keys) for host, keys in by_host.items()}

    def serves(self, host: str | None) -> bool:
        """Whether an entry here may answer for ``host``: those bucketed under other exact
        hosts cannot (wildcard entries are not bucketed, so they count for every host)."""
        return bool(self.any_host) or (host is not None and host in self.by_host)


class RouteTable(Generic[T]):
    """Compiled routes. ``match`` is pure and safe to share between concurrent requests."""

    __slots__ = ("_entries", "_groups", "_strict")

    def __init__(self, entries: Sequence[RouteEntry[T]]) -> None:
        kinds = list(dict.fromkeys(entry.semantics for entry in entries)) or [STRICT]
        self._entries = tuple(
            _compile(index, entry, kinds.index(entry.semantics))
            for index, entry in enumerate(entries)
        )
        self._groups = tuple(
            _Group(semantics, ((p, e) for p, e in enumerate(self._entries) if e.group == g))
            for g, semantics in enumerate(kinds)
        )
        self._strict = kinds == [STRICT]

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, host: str | None, path: str, method: str) -> T:
        """The first entry matching host, normalised path and method.

        Raises ``NotFound`` when no entry matches host and path, ``MethodNotAllowed`` (with
        the union of the methods those entries accept) when some did but not for ``method``,
        ``BadRequest`` for a Host that is not a host, and ``InvalidPath`` for a path that
        an upstream serving this host would read in a way we cannot tell.
        """
        allowed: set[str] = set()
        for entry in self._matching(host, path):
            # RFC 9110 §9.1: "The method token is case-sensitive", so "get" is not GET.
            if entry.methods is None or method in entry.methods:
                return entry.target
            allowed |= entry.methods
        if allowed:
            raise MethodNotAllowed(allowed)
        raise NotFound()

    def allowed(self, host: str | None, path: str) -> frozenset[str] | None:
        """The methods ``match`` accepts for host and path: the union of every matching
        entry's, as a 405's ``Allow`` lists them (RFC 9110 §10.2.1), or None when an entry
        accepts any method. Empty when nothing matches."""
        allowed: set[str] = set()
        for entry in self._matching(host, path):
            if entry.methods is None:
                return None
            allowed |= entry.methods
        return frozenset(allowed)

    def _matching(self, host: str | None, path: str) -> Iterator[_Compiled[T]]:
        """The entries whose host and path patterns match, in table order: what ``match``
        and ``allowed`` choose from."""
        host = _request_host(host)
        views = (path,) if self._strict else self._views(host, path)
        for position in self._candidates(host, views):
            entry = self._entries[position]
            view = path if self._strict else views[entry.group]
            if entry.host_matches(host) and entry.path.matches(view):
                yield entry

    def candidates(self, path: str, host: str | None = None) -> tuple[int, ...]:
        """Positions of the entries ``match`` would test, in order: shows the index at work."""
        host = _request_host(host)
        views = (path,) if self._strict else self._views(host, path)
        return tuple(self._candidates(host, views))

    def _views(self, host: str | None, path: str) -> tuple[str, ...]:
        views: list[str] = []
        for group in self._groups:
            try:
                views.append(group.semantics.view(path))
            except InvalidPath:
                if group.serves(host):
                    raise
                views.append(path)  # no entry of this group can be tested for this host
        return tuple(views)

    def _candidates(self, host: str | None, views: tuple[str, ...]) -> Iterator[int]:
        groups: list[tuple[int, ...]] = []
        for index, group in enumerate(self._groups):
            view = views[index]
            groups.extend(group.any_host.hits(view))
            bucket = group.by_host.get(host) if host is not None else None
            if bucket is not None:
                groups.extend(bucket.hits(view))
        if len(groups) == 1:
            return iter(groups[0])
        return heapq.merge(*groups)


def _compile(index: int, entry: RouteEntry[T], group: int) -> _Compiled[T]:
    try:
        # The cast is checked at runtime: compile_path_pattern refuses an unknown kind.
        kind = cast(PathKind, entry.path_kind)
        path = compile_path_pattern(kind, entry.path_pattern, entry.semantics)
        if entry.hosts is not None and not entry.hosts:
            raise ValueError("an empty host list matches nothing; use None for any host")
        hosts = None if entry.hosts is None else tuple(HostPattern(h) for h in entry.hosts)
        methods = _effective_methods(entry.methods)
    except ValueError as exc:
        raise ValueError(f"route {index}: {exc}") from None
    return _Compiled(hosts, path, methods, entry.target, group)


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
