"""Compile a validated config into a ``Runtime`` and start what it needs (key sets, pools).

Every error found here (a template with an unknown placeholder, a pattern that does not
compile) is reported like a schema error: file, key path and line. Start-up and reload both
come through ``build_runtime``, so a config that would fail at request time never goes live.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
from collections.abc import Sequence
from typing import Any

import aiohttp
from prometheus_client.core import Metric

from gateway.accesslog import AccessLog
from gateway.auth.client_auth import check_client_auth
from gateway.auth.headers import IdentityHeaders
from gateway.auth.introspection import IssuerIntrospection
from gateway.auth.jwks import KeySet, KeySetProvider
from gateway.auth.jwt import JwtVerifier
from gateway.auth.pipeline import AuthPipeline, RouteAuth
from gateway.auth.policy import compile_policy
from gateway.auth.token_cache import TokenCache
from gateway.cache.tiered import TieredCache
from gateway.config.errors import ConfigError
from gateway.config.loader import LoadedConfig
from gateway.config.models import GatewayConfig, Route
from gateway.metrics import counter_family, gauge_family
from gateway.proxy.headers import ForwardingPolicy, Removal
from gateway.proxy.trust import TrustedProxies
from gateway.proxy.upstreams import UpstreamPool, compile_upstream
from gateway.routing.semantics import path_semantics
from gateway.routing.table import RouteEntry, RouteTable
from gateway.state import CompiledRoute, Runtime
from gateway.tracing import make_tracing


def _inherit(value: bool | None, default: bool) -> bool:
    """A route setting left out takes the value from ``defaults``."""
    return default if value is None else value


def _route_auth(loaded: LoadedConfig, index: int, route: Route) -> tuple[RouteAuth, frozenset[str]]:
    config = loaded.config
    d = config.defaults
    loc_base: tuple[str | int, ...] = ("routes", index)
    templates = route.identity_headers if route.identity_headers is not None else d.identity_headers
    try:
        identity_headers = IdentityHeaders.compile(templates)
    except ValueError as exc:
        loc: tuple[str | int, ...] = ("defaults", "identity_headers")
        if route.identity_headers is not None:
            loc = (*loc_base, "identity_headers")
        raise loaded.source.error(loc, str(exc)) from None
    issuer_names = route.issuers if route.issuers is not None else d.issuers
    tokens = route.tokens or d.tokens
    auth = RouteAuth(
        required=(route.auth or d.auth) == "required",
        identify_anonymous=_inherit(route.identify_anonymous, d.identify_anonymous),
        allow_query=tokens.query,
        allow_form=tokens.form,
        policy=compile_policy(route.require or d.require),
        identity_headers=identity_headers,
        issuers=frozenset(issuer_names) if issuer_names is not None else None,
        token_mode=route.token_mode,
        realm=d.realm,
    )
    return auth, identity_headers.names


def compile_routes(
    loaded: LoadedConfig, pools: dict[str, UpstreamPool]
) -> tuple[RouteTable[CompiledRoute], tuple[CompiledRoute, ...]]:
    compiled: list[CompiledRoute] = []
    entries: list[RouteEntry[CompiledRoute]] = []
    auths = [_route_auth(loaded, index, route) for index, route in enumerate(loaded.config.routes)]
    # Every route strips every name any route (or the defaults) sets: an upstream behind two
    # routes must never receive a client's copy of a header another route vouches for.
    prefix = loaded.config.defaults.identity_prefix
    try:
        default_names = IdentityHeaders.compile(loaded.config.defaults.identity_headers).names
    except ValueError as exc:
        raise loaded.source.error(("defaults", "identity_headers"), str(exc)) from None
    removal = Removal(
        names=default_names.union(*(names for _, names in auths)),
        prefixes=(prefix.lower(),) if prefix else (),
    )
    for index, route in enumerate(loaded.config.routes):
        auth = auths[index][0]
        pool = pools[route.upstream]
        item = CompiledRoute(
            index=index,
            name=route.name or f"routes[{index}]",
            upstream=pool.target,
            pool=pool,
            strip_prefix=route.rewrite.strip_prefix if route.rewrite else None,
            add_prefix=route.rewrite.add_prefix if route.rewrite else None,
            websocket=route.websocket,
            auth=auth,
            forward_authorization=_inherit(
                route.forward_authorization, loaded.config.defaults.forward_authorization
            ),
            removal=removal,
        )
        compiled.append(item)
        match = route.match
        entries.append(
            RouteEntry(
                hosts=tuple(match.host) if match.host else None,
                path_kind=match.path.kind,
                path_pattern=match.path.pattern,
                methods=frozenset(match.methods) if match.methods else None,
                target=item,
                semantics=path_semantics(
                    loaded.config.upstreams[route.upstream].paths, loaded.config.defaults.paths
                ),
            )
        )
    try:
        table = RouteTable(entries)
    except ValueError as exc:
        raise loaded.source.error(("routes",), str(exc)) from None
    return table, tuple(compiled)


def _issuer_ssl(config: GatewayConfig) -> dict[str, ssl.SSLContext | None]:
    contexts: dict[str, ssl.SSLContext | None] = {}
    for issuer in config.issuers:
        ca = issuer.http.ca_file
        contexts[issuer.key] = ssl.create_default_context(cafile=str(ca)) if ca else None
    return contexts


def _forwarding_policy(loaded: LoadedConfig) -> ForwardingPolicy:
    fwd = loaded.config.forwarding
    try:
        return ForwardingPolicy(
            trusted=TrustedProxies(fwd.trusted_proxies),
            x_forwarded=fwd.x_forwarded,
            forwarded=fwd.forwarded,
            via=fwd.via,
            request_id_header=fwd.request_id_header,
        )
    except ValueError as exc:
        raise loaded.source.error(("forwarding",), str(exc)) from None


def check_runtime(loaded: LoadedConfig) -> None:
    """Everything start-up and reload would refuse, found without touching the network, so
    that ``gateway check`` says no to exactly what ``gateway run`` says no to."""
    config = loaded.config
    source = loaded.source
    _forwarding_policy(loaded)
    for name, upstream in config.upstreams.items():
        try:
            compile_upstream(name, upstream)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise source.error(
                ("upstreams", name, "tls", "ca_file"), f"cannot load: {exc}"
            ) from None
    for index, issuer in enumerate(config.issuers):
        base: tuple[str | int, ...] = ("issuers", index)
        if issuer.http.ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(issuer.http.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise source.error((*base, "http", "ca_file"), f"cannot load: {exc}") from None
        document = issuer.keys.jwks
        if issuer.keys.file is not None:
            try:
                document = json.loads(issuer.keys.file.read_bytes())
            except (OSError, ValueError) as exc:
                raise source.error((*base, "keys", "file"), f"cannot read a JWKS: {exc}") from None
        if document is not None:
            try:
                KeySet.from_jwks(document)
            except (ValueError, TypeError, AttributeError) as exc:
                raise source.error((*base, "keys"), f"not a usable JWK Set: {exc}") from None
        if issuer.introspection is not None:
            try:
                check_client_auth(issuer.introspection.client)
            except (OSError, ValueError, TypeError) as exc:
                loc = (*base, "introspection", "client")
                raise source.error(loc, str(exc)) from None


async def build_runtime(
    loaded: LoadedConfig,
    session: aiohttp.ClientSession,
    *,
    wait_for_keys: float = 0.0,
    previous: Runtime | None = None,
) -> Runtime:
    """Compile ``loaded`` and start its key providers; raises ConfigError on a bad config.

    ``wait_for_keys`` bounds how long to wait for the first key sets (reload waits, so the
    new config goes live with keys in hand; start-up does not, and readiness says so).
    """
    config = loaded.config
    check_runtime(loaded)
    loop = asyncio.get_running_loop()
    pools = {
        name: UpstreamPool(compile_upstream(name, upstream), loop)
        for name, upstream in config.upstreams.items()
    }
    table, routes = compile_routes(loaded, pools)
    contexts = _issuer_ssl(config)
    providers = {
        issuer.key: KeySetProvider(issuer, session, ssl=contexts[issuer.key])
        for issuer in config.issuers
    }
    verifier = JwtVerifier(config.issuers, providers) if config.issuers else None
    tc = config.token_cache
    token_cache = TokenCache(tc.max_entries, tc.max_ttl, tc.negative_ttl)
    introspection = _introspection(config, session, providers, contexts, token_cache)
    pipeline = AuthPipeline(
        verifier=verifier,
        token_cache=token_cache,
        max_token_size=config.limits.max_token_size,
        introspectors=introspection,
        issuer_modes={issuer.key: issuer.mode for issuer in config.issuers},
        issuer_keys={issuer.issuer: issuer.key for issuer in config.issuers},
        introspect_jwts=frozenset(i.key for i in config.issuers if i.introspect_jwts),
        # The token cache fronts the introspection L1: disabled together with it (an operator
        # who turns L1 off wants every request checked against Redis or the server).
        introspection_ttl=config.cache.l1.ttl if config.cache.l1.max_entries > 0 else 0.0,
    )
    runtime = Runtime(
        loaded=loaded,
        table=table,
        routes=routes,
        pipeline=pipeline,
        forwarding=_forwarding_policy(loaded),
        pools=pools,
        providers=providers,
        token_cache=token_cache,
        introspection=introspection,
        realm=config.defaults.realm,
        path_parameters=config.limits.path_parameters,
        access_log=AccessLog(config.logging.format) if config.logging.access_log else None,
        tracing=make_tracing(config.tracing.enabled),
    )
    for key, provider in providers.items():
        runtime.readiness.append(lambda k=key, p=provider: (f"keys:{k}", p.ready))
        runtime.closers.append(provider.close)
    for key, client in introspection.items():
        runtime.closers.append(client.cache.close)
        runtime.notes.append(lambda k=key, c=client.cache: (f"cache:{k}", _cache_state(c)))
    runtime.metric_sources.append(lambda: _introspection_metrics(introspection))
    runtime.metric_sources.append(
        lambda: [
            counter_family(
                "gateway_keyset_fetches", "Key-set (JWKS) fetches attempted, by issuer.",
                ["issuer"], {(k,): float(p.fetch_count) for k, p in providers.items()},
            ),
            gauge_family(
                "gateway_token_cache_entries", "Verified tokens (and rejections) held in memory.",
                [], {(): float(len(token_cache))},
            ),
        ]
    )  # fmt: skip
    await asyncio.gather(*(p.start() for p in providers.values()))
    if previous is not None:
        for key, provider in providers.items():
            if (old := previous.providers.get(key)) is not None:
                provider.inherit(old)
    await asyncio.gather(*(c.cache.start() for c in introspection.values()))
    if wait_for_keys > 0 and providers:
        await _wait_ready(list(providers.values()), wait_for_keys)
    return runtime


def _introspection(
    config: GatewayConfig,
    session: aiohttp.ClientSession,
    providers: dict[str, KeySetProvider],
    contexts: dict[str, ssl.SSLContext | None],
    token_cache: TokenCache,
) -> dict[str, IssuerIntrospection]:
    """One cached introspection client per issuer that has one.

    Each issuer gets its own Redis key prefix: the same opaque string could mean different
    things to two authorization servers, so their answers must never share an entry.
    """

    def remote_eviction(message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "token" and isinstance(key := message.get("key"), str):
            with contextlib.suppress(ValueError):
                token_cache.evict(bytes.fromhex(key))
        elif op == "subject" and isinstance(subject := message.get("subject"), str):
            token_cache.evict_subject(subject)
        elif op == "resync":
            token_cache.clear()

    clients: dict[str, IssuerIntrospection] = {}
    cache_config = config.cache
    for issuer in config.issuers:
        if issuer.introspection is None:
            continue
        tag = hashlib.sha256(issuer.issuer.encode()).hexdigest()[:12]
        prefix = f"{cache_config.key_prefix}{tag}:"
        redis = None
        if cache_config.redis is not None:
            from gateway.cache.redis import RedisCache

            redis = RedisCache(cache_config.redis, prefix)
        cache = TieredCache(cache_config, redis, on_remote_eviction=remote_eviction)
        provider = providers[issuer.key]
        clients[issuer.key] = IssuerIntrospection(
            issuer, session, cache, lambda p=provider: p.metadata, ssl=contexts[issuer.key]
        )
    return clients


def _cache_state(cache: TieredCache) -> str:
    return "degraded" if cache.degraded else "ok"


def _introspection_metrics(clients: dict[str, IssuerIntrospection]) -> list[Metric]:
    stats: dict[tuple[str, ...], float] = {}
    for key, client in clients.items():
        for name, value in client.cache.stats.items():
            stats[(key, name)] = float(value)
    return [
        counter_family(
            "gateway_introspection_cache_events", "Introspection cache events (l1_hits, "
            "l1_misses, l2_hits, l2_misses, loads, coalesced, …), by issuer.",
            ["issuer", "event"], stats,
        ),
        counter_family(
            "gateway_introspection_calls", "HTTP calls to introspection endpoints, by issuer.",
            ["issuer"], {(k,): float(c.calls) for k, c in clients.items()},
        ),
    ]  # fmt: skip


async def _wait_ready(providers: Sequence[KeySetProvider], limit: float) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not all(p.ready for p in providers):
        if asyncio.get_running_loop().time() >= deadline:
            return
        await asyncio.sleep(0.05)


__all__ = ["ConfigError", "build_runtime", "compile_routes"]
