"""``gateway check``'s route audit: a weaker route that receives near spellings of a stronger
route's paths (deploy/PATHS.md, "What gateway check warns about").

Many upstreams read ``/ADMIN/x``, ``/admin/x/``, ``/admin./x`` or ``/admin%20/x`` as
``/admin/x``. When the table hands such a spelling to a weaker route than the one that
protects ``/admin/x``, and both routes lead to the same service, that service may serve the
protected resource under the weaker route's policy. ``paths`` on the upstream closes it;
this audit finds the pairs, whatever ``paths`` says, by probing the compiled table.

Route A is *weaker* than route B when every token B accepts, A accepts too, and A accepts
something B refuses, judged on the config: B requires a token and A does not; or both do,
A's issuers include B's, A's ``scopes.all`` are a subset of B's, A has no ``scopes.any`` or
one that includes B's, A's claim rules are a subset of B's, and at least one of these
inclusions is strict. Routes whose requirements merely differ are not compared.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from gateway.config.errors import ConfigIssue, format_key_path
from gateway.config.loader import LoadedConfig
from gateway.config.models import GatewayConfig, Route
from gateway.problems import GatewayError
from gateway.routing.patterns import PathKind, compile_path_pattern
from gateway.routing.semantics import path_semantics
from gateway.routing.table import RouteEntry, RouteTable
from gateway.routing.variants import Difference, near_spellings, sample_paths

# How each difference is said, and the ``paths`` setting that makes the table see through it.
_WORDS: dict[Difference, tuple[str, str]] = {
    "case": ("case", "case: insensitive"),
    "trailing_slash": ("a trailing '/'", "trailing_slash: ignored"),
    "trailing_dot": ("a trailing '.'", "trailing_dot: ignored"),
    "trailing_space": ("a trailing space", "trailing_space: ignored"),
}


@dataclass(frozen=True, slots=True)
class Strength:
    """What a route asks of a token, as the config says it."""

    required: bool
    issuers: frozenset[str]
    scopes_all: frozenset[str]
    scopes_any: frozenset[str]
    claims: frozenset[tuple[str, str]]  # (claim, its rule as canonical JSON)

    def weaker_than(self, other: Strength) -> bool:
        if not other.required:
            return False
        if not self.required:
            return True
        any_included = not self.scopes_any or (
            bool(other.scopes_any) and self.scopes_any >= other.scopes_any
        )
        included = (
            self.issuers >= other.issuers
            and self.scopes_all <= other.scopes_all
            and any_included
            and self.claims <= other.claims
        )
        return included and self != other


@dataclass(frozen=True, slots=True)
class Shadow:
    """Route ``weaker`` receives ``spelling``, a near spelling of ``path`` of ``stronger``."""

    weaker: int
    stronger: int
    path: str
    spelling: str
    difference: Difference


def route_strength(config: GatewayConfig, route: Route) -> Strength:
    defaults = config.defaults
    require = route.require or defaults.require
    issuers = route.issuers if route.issuers is not None else defaults.issuers
    claims = {
        (name, json.dumps(rule.model_dump(exclude_none=True), sort_keys=True))
        for name, rule in require.claims.items()
    }
    return Strength(
        required=(route.auth or defaults.auth) in ("required", "session"),
        issuers=frozenset(issuers if issuers is not None else (i.key for i in config.issuers)),
        scopes_all=frozenset(require.scopes.all),
        scopes_any=frozenset(require.scopes.any),
        claims=frozenset(claims),
    )


def find_shadows(config: GatewayConfig) -> list[Shadow]:
    """Every (weaker, stronger, difference) found, once, with the first spelling found."""
    table = _table(config)
    strengths = [route_strength(config, route) for route in config.routes]
    found: dict[tuple[int, int, Difference], Shadow] = {}
    for index, route in enumerate(config.routes):
        if not strengths[index].required:
            continue  # nothing is weaker than a route that asks for nothing
        for host, method, path in _probes(table, index, route):
            for difference, spelling in near_spellings(path):
                other = _route_of(table, host, spelling, method)
                if other is None or other == index or (other, index, difference) in found:
                    continue
                if _same_service(config, config.routes[other], route) and strengths[
                    other
                ].weaker_than(strengths[index]):
                    found[(other, index, difference)] = Shadow(
                        other, index, path, spelling, difference
                    )
    return sorted(found.values(), key=lambda s: (s.weaker, s.stronger, s.difference))


def shadow_warnings(loaded: LoadedConfig) -> list[ConfigIssue]:
    """The audit's findings, one per pair of routes, at the weaker one (line, key path)."""
    config, source = loaded.config, loaded.source
    pairs: dict[tuple[int, int], list[Shadow]] = {}
    for shadow in find_shadows(config):
        pairs.setdefault((shadow.weaker, shadow.stronger), []).append(shadow)
    issues = []
    for (weaker, stronger), shadows in pairs.items():
        strong_loc: tuple[str | int, ...] = ("routes", stronger)
        line = source.line_of(strong_loc)
        strong = format_key_path(strong_loc) + (f" (line {line})" if line is not None else "")
        upstream = config.routes[stronger].upstream
        kind = (
            "less demanding"
            if route_strength(config, config.routes[weaker]).required
            else ("anonymous")
        )
        spellings = ", ".join(
            f"{_WORDS[s.difference][0]} ({s.spelling!r} for {s.path!r})" for s in shadows
        )
        settings = ", ".join(_WORDS[s.difference][1] for s in shadows)
        message = (
            f"warning: this {kind} route receives spellings of the paths of {strong} that "
            f"differ only by {spellings}; if upstream {upstream!r} reads them as one path, it "
            f"serves that route's resources here: set upstreams.{upstream}.paths: "
            f"{{{settings}}} (deploy/PATHS.md)"
        )
        weak_loc = ("routes", weaker)
        issues.append(ConfigIssue(format_key_path(weak_loc), source.line_of(weak_loc), message))
    return issues


def _table(config: GatewayConfig) -> RouteTable[int]:
    entries = []
    for index, route in enumerate(config.routes):
        match = route.match
        semantics = path_semantics(config.upstreams[route.upstream].paths, config.defaults.paths)
        methods = frozenset(match.methods) if match.methods else None
        hosts = tuple(match.host) if match.host else None
        entries.append(
            RouteEntry(hosts, match.path.kind, match.path.pattern, methods, index, semantics)
        )
    return RouteTable(entries)


def _route_of(table: RouteTable[int], host: str | None, path: str, method: str) -> int | None:
    try:
        return table.match(host, path, method)
    except GatewayError:  # 404, 405, or a spelling some upstream would misread (400)
        return None


def _probes(
    table: RouteTable[int], index: int, route: Route
) -> Iterator[tuple[str | None, str, str]]:
    """(host, method, path) for which the table hands a sample path to this very route."""
    kind = cast(PathKind, route.match.path.kind)  # PathMatch allows exactly these four
    pattern = route.match.path.pattern
    prefix = compile_path_pattern(kind, pattern).literal_prefix
    for host in _probe_hosts(route):
        for method in route.match.methods or ["GET"]:
            for path in sample_paths(kind, pattern, prefix):
                if _route_of(table, host, path, method) == index:
                    yield host, method, path


def _probe_hosts(route: Route) -> list[str | None]:
    if not route.match.host:
        return [None]
    return [f"probe.{h[2:]}" if h.startswith("*.") else h for h in route.match.host]


def _same_service(config: GatewayConfig, a: Route, b: Route) -> bool:
    upstreams = config.upstreams
    return a.upstream == b.upstream or upstreams[a.upstream].url == upstreams[b.upstream].url
