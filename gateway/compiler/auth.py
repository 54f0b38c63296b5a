"""Compile the auth parts of a config: issuers, caches, route rules (pure, no I/O but reads).

Everything the auth core needs is turned here into its own frozen values
(``gateway.auth.settings``, ``TokenRules``, ``Policy``, ``IdentityHeaders``). Errors are
``ConfigError``s pointing at the file, the line and the key path, found before anything
starts, so ``gateway check`` refuses exactly what ``gateway run`` and reload refuse.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from pathlib import Path

from gateway.auth.authenticate import IssuerPlan, OpaquePlan, TokenRules
from gateway.auth.breaker import BreakerSettings
from gateway.auth.client_auth import check_client_auth
from gateway.auth.contexts import Method, ValidationContext, context_for
from gateway.auth.headers import IdentityHeaders
from gateway.auth.jwks import KeySet
from gateway.auth.policy import ClaimOp, Policy, Scalar, compile_policy
from gateway.auth.settings import (
    CacheSettings,
    ClientCredentials,
    HttpSettings,
    IntrospectionSettings,
    IssuerSettings,
    KeyRefreshSettings,
    KeySourceSettings,
)
from gateway.cache.settings import RedisSettings
from gateway.config.loader import LoadedConfig
from gateway.config.models import (
    ClaimRule,
    ClientAuth,
    GatewayConfig,
    Issuer,
    RedisConfig,
    Require,
    Route,
)
from gateway.config.types import TokenMode
from gateway.config.yaml import Loc


def client_credentials(client: ClientAuth) -> ClientCredentials:
    """The gateway's credentials at an authorization server, as the auth core takes them."""
    secret = client.client_secret
    return ClientCredentials(
        client_id=client.client_id,
        method=client.method,
        client_secret=secret.get_secret_value() if secret is not None else None,
        private_key_file=client.private_key_file,
        private_key_alg=client.private_key_alg,
        key_id=client.key_id,
    )


def issuer_settings(issuer: Issuer) -> IssuerSettings:
    introspection = None
    if issuer.introspection is not None:
        spec = issuer.introspection
        introspection = IntrospectionSettings(
            client=client_credentials(spec.client),
            endpoint=spec.endpoint,
            token_type_hint=spec.token_type_hint,
            timeout=spec.timeout,
            allow_missing_audience=spec.allow_missing_audience,
            token_prefixes=tuple(spec.token_prefixes),
        )
    keys, refresh, http = issuer.keys, issuer.refresh, issuer.http
    return IssuerSettings(
        key=issuer.key,
        issuer=issuer.issuer,
        audiences=tuple(issuer.audiences),
        keys=KeySourceSettings(keys.discovery, keys.jwks_uri, keys.file, keys.jwks),
        algorithms=tuple(issuer.algorithms),
        hmac_secret=issuer.hmac_secret.get_secret_value() if issuer.hmac_secret else None,
        leeway=issuer.leeway,
        required_claims=tuple(issuer.required_claims),
        require_at_jwt=issuer.require_at_jwt,
        scope_claims=tuple(issuer.scope_claims),
        refresh=KeyRefreshSettings(
            refresh.default, refresh.min, refresh.max, refresh.unknown_kid_interval, refresh.retry
        ),
        http=HttpSettings(
            http.timeout,
            http.ca_file,
            http.insecure_http,
            BreakerSettings(http.breaker.failures, http.breaker.open_for),
        ),
        introspection=introspection,
        mode=issuer.mode,
        introspect_jwts=issuer.introspect_jwts,
    )


def cache_settings(config: GatewayConfig) -> CacheSettings:
    tc, cache = config.token_cache, config.cache
    return CacheSettings(
        verified_max_entries=tc.max_entries,
        verified_max_bytes=tc.max_bytes,
        verified_max_ttl=tc.max_ttl,
        verified_negative_ttl=tc.negative_ttl,
        l1_max_entries=cache.l1.max_entries,
        l1_max_bytes=cache.l1.max_bytes,
        l1_ttl=cache.l1.ttl,
        max_ttl=cache.max_ttl,
        negative_ttl=cache.negative_ttl,
        negative_max_entries=tc.max_entries,
        serve_stale=cache.serve_stale,
        key_prefix=cache.key_prefix,
    )


def redis_settings(redis: RedisConfig | None) -> RedisSettings | None:
    if redis is None:
        return None
    hosts: tuple[tuple[str, int], ...] = ()
    service = None
    if redis.sentinel is not None:
        hosts = tuple(_host_port(item) for item in redis.sentinel.hosts)
        service = redis.sentinel.service
    return RedisSettings(
        redis.url, hosts, service, redis.cluster, redis.timeout, redis.admin_timeout
    )


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)


def check_issuer_files(loaded: LoadedConfig) -> None:
    """CA bundles, key files and inline key sets load now, or the config is refused."""
    source = loaded.source
    for index, issuer in enumerate(loaded.config.issuers):
        base: Loc = ("issuers", index)
        if issuer.http.ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(issuer.http.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise source.error((*base, "http", "ca_file"), f"cannot load: {exc}") from None
        document = issuer.keys.jwks
        if issuer.keys.file is not None:
            try:
                document = json.loads(Path(issuer.keys.file).read_bytes())
            except (OSError, ValueError) as exc:
                raise source.error((*base, "keys", "file"), f"cannot read a JWKS: {exc}") from None
        if document is not None:
            try:
                KeySet.from_jwks(document)
            except (ValueError, TypeError, AttributeError) as exc:
                raise source.error((*base, "keys"), f"not a usable JWK Set: {exc}") from None
        if issuer.introspection is not None:
            try:
                check_client_auth(issuer_settings(issuer).introspection.client)  # type: ignore[union-attr]
            except (OSError, ValueError, TypeError) as exc:
                loc = (*base, "introspection", "client")
                raise source.error(loc, str(exc)) from None


def policy_of(require: Require) -> Policy:
    """A route's ``require`` section as a ``Policy`` (``ValueError`` for an impossible scope)."""
    claims: dict[str, tuple[ClaimOp, tuple[Scalar, ...]]] = {
        name: _claim(rule) for name, rule in require.claims.items()
    }
    return compile_policy(require.scopes.all, require.scopes.any, claims)


def _claim(rule: ClaimRule) -> tuple[ClaimOp, tuple[Scalar, ...]]:
    if rule.one_of is not None:
        return "one_of", tuple(rule.one_of)
    if rule.equals is not None:
        return "equals", (rule.equals,)
    assert rule.contains is not None  # ClaimRule guarantees exactly one
    return "contains", (rule.contains,)


def route_policy(loaded: LoadedConfig, index: int, route: Route) -> Policy:
    defaults = loaded.config.defaults
    try:
        return policy_of(route.require or defaults.require)
    except ValueError as exc:
        loc: Loc = ("routes", index, "require") if route.require else ("defaults", "require")
        raise loaded.source.error((*loc, "scopes"), str(exc)) from None


def route_headers(loaded: LoadedConfig, index: int, route: Route) -> IdentityHeaders:
    defaults = loaded.config.defaults
    templates = route.identity_headers if route.identity_headers is not None else None
    try:
        return IdentityHeaders.compile(templates or defaults.identity_headers)
    except ValueError as exc:
        loc: Loc = ("defaults", "identity_headers")
        if templates is not None:
            loc = ("routes", index, "identity_headers")
        raise loaded.source.error(loc, str(exc)) from None


def default_identity_headers(loaded: LoadedConfig) -> IdentityHeaders:
    try:
        return IdentityHeaders.compile(loaded.config.defaults.identity_headers)
    except ValueError as exc:
        raise loaded.source.error(("defaults", "identity_headers"), str(exc)) from None


class Contexts:
    """One ``ValidationContext`` per (issuer, method), shared by every route that uses it."""

    def __init__(self, issuers: Mapping[str, IssuerSettings]) -> None:
        self._issuers = issuers
        self._made: dict[tuple[str, Method], ValidationContext] = {}

    def get(self, key: str, method: Method) -> ValidationContext:
        found = self._made.get((key, method))
        if found is None:
            found = self._made[(key, method)] = context_for(self._issuers[key], method)
        return found

    def all(self) -> tuple[ValidationContext, ...]:
        return tuple(self._made.values())


def token_rules(
    loaded: LoadedConfig,
    index: int,
    route: Route,
    issuers: Mapping[str, IssuerSettings],
    contexts: Contexts,
) -> TokenRules:
    """How this route validates each accepted issuer's tokens, and where opaque ones go."""
    defaults = loaded.config.defaults
    names = route.issuers if route.issuers is not None else defaults.issuers
    accepted = [issuers[name] for name in names] if names is not None else list(issuers.values())
    jwt: dict[str, IssuerPlan] = {}
    opaque: list[OpaquePlan] = []
    for issuer in accepted:
        mode: TokenMode = route.token_mode or issuer.mode
        if mode == "introspection" and issuer.introspection is None:
            loc: Loc = ("routes", index, "token_mode")
            raise loaded.source.error(
                loc, f"introspection, but issuer {issuer.key!r} has no introspection section"
            )
        both = mode != "introspection" and issuer.introspect_jwts
        method: Method = "jwt+introspection" if both else mode if mode == "introspection" else "jwt"
        jwt[issuer.key] = IssuerPlan(
            contexts.get(issuer.key, method),
            verify_locally=method != "introspection",
            introspect=method != "jwt",
        )
        if mode != "jwt" and issuer.introspection is not None:
            plan = IssuerPlan(contexts.get(issuer.key, "introspection"), False, True)
            opaque.append(OpaquePlan(issuer.introspection.token_prefixes, plan))
    return TokenRules(jwt, _ordered_opaque(loaded, index, route, opaque))


def _ordered_opaque(
    loaded: LoadedConfig, index: int, route: Route, plans: list[OpaquePlan]
) -> tuple[OpaquePlan, ...]:
    """Prefixed issuers first; at most one catch-all; no prefix that another one starts
    with: otherwise which authorization server sees a token would be a guess."""
    where: Loc = ("routes", index, "issuers") if route.issuers is not None else ("routes", index)
    catch_all = [p for p in plans if not p.prefixes]
    if len(catch_all) > 1:
        names = ", ".join(repr(p.plan.context.issuer.key) for p in catch_all)
        raise loaded.source.error(
            where,
            f"opaque tokens here could belong to issuers {names}: give all but one of them "
            "introspection.token_prefixes, so a token is only sent where it belongs",
        )
    seen: list[tuple[str, str]] = []
    for plan in plans:
        for prefix in plan.prefixes:
            for other, owner in seen:
                if owner != plan.plan.context.issuer.key and (
                    prefix.startswith(other) or other.startswith(prefix)
                ):
                    raise loaded.source.error(
                        where,
                        f"token prefixes {other!r} ({owner}) and {prefix!r} "
                        f"({plan.plan.context.issuer.key}) overlap",
                    )
            seen.append((prefix, plan.plan.context.issuer.key))
    return tuple(sorted(plans, key=lambda p: not p.prefixes))
