"""Compile a validated config into plain frozen values: the route table, each route's
policy, templates and upstream target, the verifier settings (design principle 5).

Compiling is pure: no event loop, no sockets, no file handles beyond reading the files a
config refers to (CA bundles, key sets, client keys). ``gateway check`` is exactly this
step; ``gateway.runtime`` then *starts* what it describes (pools, key-set providers,
caches). Every error is a ``ConfigError`` with file, line and key path.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.auth.contexts import ValidationContext
from gateway.auth.decide import RouteAuth
from gateway.auth.identity_token import SigningSettings
from gateway.auth.resource_metadata import ResourceMetadata
from gateway.auth.sessions.settings import LoginSettings
from gateway.auth.settings import CacheSettings, IssuerSettings
from gateway.cache.settings import RedisSettings
from gateway.compiler.auth import (
    Contexts,
    cache_settings,
    check_issuer_files,
    default_identity_headers,
    issuer_settings,
    redis_settings,
    route_headers,
    route_policy,
    token_rules,
)
from gateway.compiler.identity_token import signed_identity, signing_settings
from gateway.compiler.listener_tls import listener_tls
from gateway.compiler.ratelimit import RateLimitingSettings, rate_limiting_settings, route_limits
from gateway.compiler.sender import (
    DpopReplaySettings,
    RouteView,
    dpop_replay_settings,
    issuer_identifiers,
    protected_resources,
    route_challenge,
    sender_rules,
)
from gateway.compiler.sessions import login_settings, route_session
from gateway.config.loader import LoadedConfig
from gateway.config.models import GatewayConfig, TokenSources, Upstream, WebSocket
from gateway.decision.settings import DecisionSettings, decision_settings
from gateway.listener.tls import TlsFiles
from gateway.proxy.headers import ForwardingPolicy, Removal
from gateway.proxy.targets import UpstreamSpec, UpstreamTarget, make_target
from gateway.proxy.trust import TrustedProxies
from gateway.proxy.websocket import WebSocketRoute
from gateway.routing.semantics import PathSemantics, path_semantics
from gateway.routing.table import RouteEntry, RouteTable


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """Everything the request path needs about one route."""

    index: int
    name: str
    upstream: UpstreamTarget
    strip_prefix: str | None
    add_prefix: str | None
    path_semantics: PathSemantics  # how the upstream reads paths (matching and stripping)
    websocket: WebSocketRoute | None  # None: never upgrades
    auth: RouteAuth
    forward_authorization: bool
    removal: Removal


@dataclass(frozen=True, slots=True)
class CompiledConfig:
    """A whole config, compiled; ``gateway.runtime.start_runtime`` starts it."""

    loaded: LoadedConfig
    table: RouteTable[CompiledRoute]
    routes: tuple[CompiledRoute, ...]
    upstreams: Mapping[str, UpstreamTarget]
    forwarding: ForwardingPolicy
    issuers: tuple[IssuerSettings, ...]
    contexts: tuple[ValidationContext, ...]
    cache: CacheSettings
    redis: RedisSettings | None
    sealing_keys: tuple[bytes, ...]
    realm: str
    path_parameters: bool
    max_token_size: int
    admin_token: str | None
    resource_documents: Mapping[str, ResourceMetadata]  # RFC 9728 documents by path
    dpop_replay: DpopReplaySettings | None  # None: no route checks DPoP proofs
    signing: SigningSettings | None  # the identity-token key ring; None: none configured
    rate_limiting: RateLimitingSettings
    decision: DecisionSettings | None = None  # the forward-auth service; None: off
    listen_tls: TlsFiles | None = None  # the proxy listener's certificate; None: plain HTTP
    logins: tuple[LoginSettings, ...] = ()  # browser logins (auth: session routes)

    @property
    def config(self) -> GatewayConfig:
        return self.loaded.config


def compile_config(loaded: LoadedConfig) -> CompiledConfig:
    """The pure compile step; raises ``ConfigError``."""
    config = loaded.config
    forwarding = _forwarding_policy(loaded)
    upstreams = {name: _upstream(loaded, name, spec) for name, spec in config.upstreams.items()}
    check_issuer_files(loaded)
    issuers = {issuer.key: issuer_settings(issuer) for issuer in config.issuers}
    contexts = Contexts(issuers)
    signing = signing_settings(loaded)
    table, routes, documents = _routes(loaded, upstreams, issuers, contexts, signing)
    redis = config.cache.redis
    try:
        redis_compiled = redis_settings(redis)
    except ValueError as exc:
        raise loaded.source.error(("cache", "redis", "sentinel", "hosts"), str(exc)) from None
    return CompiledConfig(
        loaded=loaded,
        table=table,
        routes=routes,
        upstreams=upstreams,
        forwarding=forwarding,
        issuers=tuple(issuers.values()),
        contexts=contexts.all(),
        cache=cache_settings(config),
        redis=redis_compiled,
        sealing_keys=tuple(redis.sealing_keys) if redis is not None else (),
        realm=config.defaults.realm,
        path_parameters=config.limits.path_parameters,
        max_token_size=config.limits.max_token_size,
        admin_token=_admin_token(loaded),
        resource_documents=documents,
        dpop_replay=dpop_replay_settings(loaded, routes),
        signing=signing,
        rate_limiting=rate_limiting_settings(loaded),
        decision=decision_settings(loaded),
        listen_tls=listener_tls(loaded),
        logins=login_settings(loaded, issuers),
    )


def _websocket(setting: bool | WebSocket) -> WebSocketRoute | None:
    if setting is False:
        return None
    return WebSocketRoute((WebSocket() if setting is True else setting).max_connections)


def _admin_token(loaded: LoadedConfig) -> str | None:
    """Admin actions revoke tokens: open only to a loopback listener, else a token is due."""
    admin = loaded.config.admin
    if admin.token is not None:
        return admin.token.get_secret_value()
    try:
        loopback = ipaddress.ip_address(admin.host).is_loopback
    except ValueError:
        loopback = admin.host == "localhost"
    if not loopback:
        raise loaded.source.error(
            ("admin", "token"),
            f"the admin listener is bound to {admin.host}, beyond loopback: set a token "
            "(token: ${GATEWAY_ADMIN_TOKEN}) or bind it to 127.0.0.1",
        )
    return None


def _inherit(value: bool | None, default: bool) -> bool:
    """A route setting left out takes the value from ``defaults``."""
    return default if value is None else value


def _routes(
    loaded: LoadedConfig,
    upstreams: Mapping[str, UpstreamTarget],
    issuers: Mapping[str, IssuerSettings],
    contexts: Contexts,
    signing: SigningSettings | None,
) -> tuple[RouteTable[CompiledRoute], tuple[CompiledRoute, ...], Mapping[str, ResourceMetadata]]:
    config = loaded.config
    defaults = config.defaults
    headers = [route_headers(loaded, i, route) for i, route in enumerate(config.routes)]
    # Every route strips every name any route (or the defaults) sets: an upstream behind two
    # routes must never receive a client's copy of a header another route vouches for.
    default_names = default_identity_headers(loaded).names
    prefix = defaults.identity_prefix
    signed = [
        signed_identity(
            loaded, index, route, upstreams[route.upstream],
            path_semantics(config.upstreams[route.upstream].paths, defaults.paths), signing,
        )
        for index, route in enumerate(config.routes)
    ]  # fmt: skip
    # A client must not be able to send its own identity token either.
    token_names = {s.route.header.lower() for s in signed if s is not None and not s.route.bearer}
    removal = Removal(
        names=default_names.union(*(h.names for h in headers), token_names),
        prefixes=(prefix.lower(),) if prefix else (),
    )
    names = [route.name or f"routes[{index}]" for index, route in enumerate(config.routes)]
    policies = [route_policy(loaded, i, route) for i, route in enumerate(config.routes)]
    senders = [sender_rules(loaded, i, route) for i, route in enumerate(config.routes)]
    views = [
        RouteView(
            name=names[i],
            issuers=issuer_identifiers(route.issuers or defaults.issuers, issuers),
            policy=policies[i],
            sender=senders[i],
            bearer_methods=_bearer_methods(route.tokens or defaults.tokens),
        )
        for i, route in enumerate(config.routes)
    ]
    documents, resource_of = protected_resources(loaded, views)
    compiled: list[CompiledRoute] = []
    entries: list[RouteEntry[CompiledRoute]] = []
    for index, route in enumerate(config.routes):
        tokens = route.tokens or defaults.tokens
        semantics = path_semantics(config.upstreams[route.upstream].paths, defaults.paths)
        auth = RouteAuth(
            id=index,
            # A session route requires an identity too: a token when one is sent (a bad one
            # is a 401), else the session.
            required=(route.auth or defaults.auth) in ("required", "session"),
            identify_anonymous=_inherit(route.identify_anonymous, defaults.identify_anonymous),
            allow_query=tokens.query,
            allow_form=tokens.form,
            policy=policies[index],
            identity_headers=headers[index],
            tokens=token_rules(loaded, index, route, issuers, contexts),
            sender=senders[index],
            challenge=route_challenge(
                defaults.realm, resource_of.get(names[index]), policies[index], senders[index]
            ),
            rate_limits=route_limits(loaded, index, route, names[index]),
            identity_token=signed[index],
            session=route_session(loaded, route),
        )
        item = CompiledRoute(
            index=index,
            name=names[index],
            upstream=upstreams[route.upstream],
            strip_prefix=route.rewrite.strip_prefix if route.rewrite else None,
            add_prefix=route.rewrite.add_prefix if route.rewrite else None,
            path_semantics=semantics,
            websocket=_websocket(route.websocket),
            auth=auth,
            forward_authorization=_inherit(
                route.forward_authorization, defaults.forward_authorization
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
                semantics=semantics,
            )
        )
    try:
        table = RouteTable(entries)
    except ValueError as exc:
        raise loaded.source.error(("routes",), str(exc)) from None
    return table, tuple(compiled), documents


def _bearer_methods(tokens: TokenSources) -> list[str]:
    """RFC 9728 §2 bearer_methods_supported, from where a route reads tokens."""
    return ["header"] + (["body"] if tokens.form else []) + (["query"] if tokens.query else [])


def _upstream(loaded: LoadedConfig, name: str, upstream: Upstream) -> UpstreamTarget:
    t, pool, tls = upstream.timeouts, upstream.pool, upstream.tls
    spec = UpstreamSpec(
        url=upstream.url,
        connect_timeout=t.connect,
        read_timeout=t.read,
        total_timeout=t.total,
        max_connections=pool.max_connections,
        idle_timeout=pool.idle_timeout,
        ca_file=tls.ca_file,
        verify=tls.verify,
        server_name=tls.server_name,
        preserve_host=upstream.preserve_host,
    )
    try:
        return make_target(name, spec)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise loaded.source.error(
            ("upstreams", name, "tls", "ca_file"), f"cannot load: {exc}"
        ) from None


def _forwarding_policy(loaded: LoadedConfig) -> ForwardingPolicy:
    fwd = loaded.config.forwarding
    try:
        return ForwardingPolicy(
            trusted=TrustedProxies(fwd.trusted_proxies),
            x_forwarded=fwd.x_forwarded,
            forwarded=fwd.forwarded,
            via=fwd.via,
            request_id_header=fwd.request_id_header,
            proxy_only_headers=frozenset(fwd.proxy_only_headers),
            guarded_headers=_certificate_headers(loaded),
        )
    except ValueError as exc:
        raise loaded.source.error(("forwarding",), str(exc)) from None


def _certificate_headers(loaded: LoadedConfig) -> tuple[tuple[str, TrustedProxies], ...]:
    """The front proxy's client-certificate headers the routes read (RFC 8705 behind a
    TLS-terminating proxy), each with the peers that may set it: those of the
    ``client_certificates.trusted_proxies`` naming it (``forwarding.trusted_proxies`` where a
    section lists none), whatever ``forwarding.trusted_proxies`` says. From anyone else the
    header is a certificate the client typed (or a proxy trusted only for X-Forwarded-For
    let through), which the gateway does not believe, so no upstream gets it either. A
    header two routes read with different lists passes from a peer in either: each is a
    proxy the operator says sets it (RFC 9440 §2: such a proxy "MUST" sanitize it), while
    each route believes only its own list (``sender_rules``)."""
    config = loaded.config
    sections = [config.defaults.client_certificates]
    sections += [r.client_certificates for r in config.routes if r.client_certificates]
    peers: dict[str, list[str]] = {}
    for section in sections:
        if section.mode == "off" or section.source != "header":
            continue
        trusted = section.trusted_proxies
        if trusted is None:
            trusted = config.forwarding.trusted_proxies
        peers.setdefault(section.header.lower(), []).extend(trusted)
    return tuple((name, TrustedProxies(networks)) for name, networks in sorted(peers.items()))
